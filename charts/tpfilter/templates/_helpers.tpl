{{/*
The chart's name, truncated to 63 characters (the DNS label limit of some name fields).
*/}}
{{- define "tpfilter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: <release>-<chart> unless the release name already contains the
chart name.
*/}}
{{- define "tpfilter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tpfilter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a DaemonSet's selector is immutable).
*/}}
{{- define "tpfilter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tpfilter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/*
Common labels (Helm's recommended set).
*/}}
{{- define "tpfilter.labels" -}}
helm.sh/chart: {{ include "tpfilter.chart" . }}
{{ include "tpfilter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tpfilter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The controller's labels: the same set with component: controller (its own selector).
*/}}
{{- define "tpfilter.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tpfilter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "tpfilter.controllerLabels" -}}
helm.sh/chart: {{ include "tpfilter.chart" . }}
{{ include "tpfilter.controllerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tpfilter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tpfilter.controllerName" -}}
{{- printf "%s-controller" (include "tpfilter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tpfilter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tpfilter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tpfilter.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The pin directory, checked: the host's bpffs is mounted at /sys/fs/bpf, so the pins must
live below it to outlive the pod.
*/}}
{{- define "tpfilter.pinDir" -}}
{{- $dir := .Values.pinDir | trimSuffix "/" }}
{{- if not (hasPrefix "/sys/fs/bpf/" $dir) }}
{{- fail (printf "pinDir must be a directory under /sys/fs/bpf (the host's bpffs), got %q" .Values.pinDir) }}
{{- end }}
{{- $dir }}
{{- end }}

{{- define "tpfilter.stateDir" -}}
{{- $dir := .Values.stateDir | trimSuffix "/" }}
{{- if not (hasPrefix "/" $dir) }}
{{- fail (printf "stateDir must be an absolute host path, got %q" .Values.stateDir) }}
{{- end }}
{{- $dir }}
{{- end }}
