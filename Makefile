# The README's two commands: `make demo` and `make test`. Each installs what it needs, idempotently.
PYTHON ?= python3
APT_PACKAGES = git ostree skopeo docker-registry apache2-utils qemu-system-x86 busybox-static \
	e2fsprogs gnupg rsync groovy gir1.2-ostree-1.0 python3-gi chromium buildah \
	mmdebstrap ovmf grub-efi-amd64-bin grub-common mtools dosfstools fdisk openssh-client
GITLAB_CI_LOCAL = gitlab-ci-local@4.73.0
STAMP = .deps

.PHONY: demo test deps apt pip npm lint bench clean

demo: deps
	PYTHON=$(PYTHON) scripts/demo.sh

test: deps npm lint
	$(PYTHON) -m pytest -q -n 2 --dist loadgroup --durations=25 tests

lint: deps
	$(PYTHON) -m ruff check edgeci tests bench
	$(PYTHON) -m mypy

bench: deps
	$(PYTHON) bench/run.py

deps: apt pip

# apt-get only when a package is missing: a second run costs one dpkg-query.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP)/pip: pyproject.toml
	@mkdir -p $(STAMP)
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

pip: $(STAMP)/pip

npm:
	@command -v gitlab-ci-local >/dev/null 2>&1 || npm install -g --no-audit --no-fund $(GITLAB_CI_LOCAL)

clean:
	rm -rf build reports $(STAMP) .pytest_cache .mypy_cache .ruff_cache

demo-image: deps
	PYTHON=$(PYTHON) scripts/demo-image.sh
