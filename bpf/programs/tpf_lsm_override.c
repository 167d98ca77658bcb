/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_lsm_override.c - the Override program of one BPF LSM hook, a bcc module of its own
 * compiled by the agent (tpfilter.programs.lsm_override) for each LSM hook that a loaded
 * policy overrides, and unloaded when none does:
 *
 *   -DTPF_LSM_HOOK=<hook>       the LSM hook, e.g. file_open (the BPF LSM program's target)
 *   -DTPF_OVERRIDE_HOOK=<id>    the hook ID of the kprobe on security_<hook>
 *
 * The kprobe's selector (tpf_programs.c, tpf_act) records {argError, hook ID} for the task
 * in tpf_override, a map of the main module this one shares (bcc "extern"); the kernel runs
 * this program inside security_<hook> after that kprobe, and it returns the error, which
 * the kernel gives to the caller. A verdict made for another hook is left alone.
 *
 * Why a module per hook: bcc loads and attaches every LSM program of a module when it
 * compiles it, and a node has a few hundred LSM hooks; one small module per hook in use
 * costs one short compile when a policy first overrides that hook.
 */
#include "tpf_programs.h"

BPF_TABLE("extern", u64, struct tpf_verdict, tpf_override, 16384);

#define TPF_LSM(hook) LSM_PROBE(hook)

TPF_LSM(TPF_LSM_HOOK)
{
	u64 id = bpf_get_current_pid_tgid();
	struct tpf_verdict *v = tpf_override.lookup(&id);
	s32 error;

	if (!v || v->hook != TPF_OVERRIDE_HOOK)
		return 0;
	error = v->error;
	tpf_override.delete(&id);
	return error;
}
