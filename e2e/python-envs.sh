#!/usr/bin/env bash
# Creates the Python environments of the two client suites. e2e/run-tests.sh starts it in the
# background beside the Rust compilation, so that the suites' steps only run tests;
# e2e/compat/run.sh calls it for its own environment. Cheap when they exist already.
#
#   e2e/python-envs.sh            # both
#   e2e/python-envs.sh compat     # only the compatibility suite's
#
# - target/compat-venv: e2e/compat/requirements.txt (the compatibility suite, e2e/compat/run.sh).
# - the congruence suite's venv (${CONFORMANCE_VENV:-~/.cache/shoal-conformance/venv}), with the
#   packages ../shared/conformance/run-qdrant-client-suite.sh installs (that script checks
#   and installs again itself: this only saves its step the time); skipped when
#   ../shared/conformance is absent, as e2e/conformance/run.sh skips the suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
case "${1:-}" in
    "" | compat) ;;
    *) echo "usage: $0 [compat]" >&2; exit 2 ;;
esac

compat="$repo/target/compat-venv"
if [[ ! -x "$compat/bin/python" ]]; then
    echo "creating virtualenv at $compat"
    python3 -m venv "$compat"
fi
"$compat/bin/python" -m pip install -q --disable-pip-version-check -r "$here/compat/requirements.txt"
echo "compatibility suite: $compat ready"

if [[ "${1:-}" != compat && -x "$repo/../shared/conformance/run-qdrant-client-suite.sh" ]]; then
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
