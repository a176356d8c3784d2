#!/usr/bin/env bash
# Creates the Python environments of the two client suites, so that their steps of
# e2e/run-tests.sh only run tests (the run starts this in the background, beside the Rust
# compilation). Each suite's own script checks its environment again and installs what is
# missing, so this only saves time; running it twice is cheap.
#
#   e2e/python-envs.sh
#
# - target/compat-venv: e2e/compat/requirements.txt (the compatibility suite, e2e/compat/run.sh).
# - the congruence suite's venv (${CONFORMANCE_VENV:-~/.cache/shoal-conformance/venv}), with the
#   packages ../shared/conformance/run-qdrant-client-suite.sh installs; skipped when
#   ../shared/conformance is absent, as e2e/conformance/run.sh skips the suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

compat="$repo/target/compat-venv"
if [[ ! -x "$compat/bin/python" ]]; then
    echo "creating virtualenv at $compat"
    python3 -m venv "$compat"
fi
"$compat/bin/python" -m pip install -q --disable-pip-version-check -r "$here/compat/requirements.txt"
echo "compatibility suite: $compat ready"

if [[ -x "$repo/../shared/conformance/run-qdrant-client-suite.sh" ]]; then
    # The same test as the suite's script makes before it installs.
    venv="${CONFORMANCE_VENV:-$HOME/.cache/shoal-conformance/venv}"
    if [[ ! -x "$venv/bin/pytest" ]] || ! "$venv/bin/python" -c 'import qdrant_client, pytest_timeout' 2> /dev/null; then
        echo "creating virtualenv at $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "qdrant-client==1.18.0" "pytest>=8" pytest-timeout pytest-asyncio pytest-mock numpy
    fi
    echo "congruence suite: $venv ready"
fi
