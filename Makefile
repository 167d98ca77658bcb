# Entry points only; the scripts do the work. `make test` runs what CI runs (.ci/run).
.PHONY: install test run node e2e crds lint

install:  ## apt + venv + project (Debian 12, root)
	bash scripts/install.sh
test:     ## install, ruff, mypy, every pytest suite (e2e skips without Docker)
	bash scripts/test.sh
run:      ## the agent against a local control plane
	bash scripts/run-local.sh
node:     ## a real kubelet + containerd node with the agent installed by helm
	bash scripts/run-node.sh
e2e:      ## tests/e2e on kind: cluster + image + chart (needs Docker; `make test` runs it on a real node)
	bash scripts/e2e-kind.sh
crds:     ## regenerate crds/ and copy them into the chart
	.venv/bin/python crds/gen_crds.py && bash scripts/sync-chart-crds.sh
lint:
	.venv/bin/ruff check . && .venv/bin/mypy
