#!/usr/bin/env bash
# Validates the CloudFormation templates in deploy/cloudformation/ offline:
# 1. installs cfn-lint and checkov (pinned, from PyPI) into the project-local virtualenv .venv-cfn
#    (does nothing when they are already there; else about 40 s and 420 MB, mostly checkov);
# 2. cfn-lint: no error and no warning (the template's schema, intrinsic functions, references);
# 3. checkov: no failed check; every suppression in a template is a `checkov:skip=ID:reason`
#    comment with its reason (deploy/README.md lists them);
# 4. the job's task definitions (one per cluster process index) are the same but for the index.
# scripts/test.sh calls it; about 25 s once installed. The stack's deployment into moto is the
# end-to-end test `cargo test -p pageflow --test end_to_end cloudformation::`.
set -euo pipefail
cd "$(dirname "$0")/../.."

CFN_LINT_VERSION="1.58.0"
CHECKOV_VERSION="3.3.30"
VENV=".venv-cfn"
PYTHON="${PYTHON:-python3}"
TEMPLATES=(deploy/cloudformation/*.yaml)

say() { echo "cloudformation: $*"; }
fail() {
  echo "cloudformation: $*" >&2
  exit 1
}

# shellcheck source=scripts/lib/venv.sh
. scripts/lib/venv.sh

installed() {
  [ -x "$VENV/bin/cfn-lint" ] && [ -x "$VENV/bin/checkov" ] &&
    versions="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("cfn-lint"), m.version("checkov"))' 2>/dev/null)" &&
    [ "$versions" = "$CFN_LINT_VERSION $CHECKOV_VERSION" ]
}

install() {
  if installed; then
    say "cfn-lint $CFN_LINT_VERSION and checkov $CHECKOV_VERSION already installed in $VENV"
    return 0
  fi
  ensure_venv "$VENV" "$PYTHON"
  say "installing cfn-lint==$CFN_LINT_VERSION and checkov==$CHECKOV_VERSION from PyPI into $VENV (a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "cfn-lint==$CFN_LINT_VERSION" "checkov==$CHECKOV_VERSION" ||
    fail "pip could not install cfn-lint and checkov; check that PyPI is reachable and run this again"
  installed || fail "cfn-lint or checkov was installed but does not run; delete $VENV and run this again"
}

install

say "cfn-lint ${TEMPLATES[*]}"
"$VENV/bin/cfn-lint" --format parseable -- "${TEMPLATES[@]}" ||
  fail "cfn-lint found problems (above: file:line:column:rule:message); fix them, or read https://github.com/aws-cloudformation/cfn-lint/blob/main/docs/rules.md"

# Every suppression says why. A bare `checkov:skip=ID` (no reason) is refused.
for template in "${TEMPLATES[@]}"; do
  if grep -nE 'checkov:skip=' "$template" | grep -vE 'checkov:skip=CKV2?_[A-Z0-9]+_[0-9]+:.{20,}'; then
    fail "$template: a checkov:skip above has no reason; write it as '# checkov:skip=CKV_AWS_N:why this check does not apply here'"
  fi
done

say "checkov ${TEMPLATES[*]}"
CHECKOV_FILES=()
for template in "${TEMPLATES[@]}"; do CHECKOV_FILES+=(-f "$template"); done
# --skip-download: no call to Prisma Cloud for guidelines (offline); BC_SKIP_MAPPING likewise.
BC_SKIP_MAPPING=TRUE "$VENV/bin/checkov" --quiet --compact --skip-download \
  --framework cloudformation "${CHECKOV_FILES[@]}" ||
  fail "checkov found failed checks (above); fix the resource, or suppress the check in the template with '# checkov:skip=ID:reason' and list it in deploy/README.md"

# The task definitions of the cluster's processes differ only by the process index (and the log
# stream prefix, and how the address list is chosen); anything else would make the processes of
# one cluster run different configurations.
"$VENV/bin/python" - "${TEMPLATES[@]}" <<'PY' || fail "the task definitions TaskDefinitionP0..P2 differ (above); make the same change to each"
import json
import re
import sys

from cfnlint.decode import decode


def normalised(properties):
    properties = json.loads(json.dumps(properties))
    properties.pop("Family", None)
    for container in properties.get("ContainerDefinitions", []):
        container.get("LogConfiguration", {}).get("Options", {}).pop("awslogs-stream-prefix", None)
        kept = []
        for entry in container.get("Environment", []):
            text = json.dumps(entry)
            if "PAGEFLOW__CLUSTER__PROCESS" in text or "PAGEFLOW__CLUSTER__ADDRESSES" in text:
                continue
            kept.append(entry)
        container["Environment"] = kept
    return properties


status = 0
for path in sys.argv[1:]:
    template, problems = decode(path)
    if problems or template is None:
        print(f"{path}: cannot read: {problems}")
        sys.exit(1)
    resources = template.get("Resources", {})
    # The job's processes only: the serving tier's ApiTaskDefinition runs another command.
    names = sorted(
        n
        for n, r in resources.items()
        if r.get("Type") == "AWS::ECS::TaskDefinition" and re.fullmatch(r"TaskDefinitionP[0-9]+", n)
    )
    if not names:
        continue
    reference = normalised(resources[names[0]]["Properties"])
    for name in names[1:]:
        if normalised(resources[name]["Properties"]) != reference:
            print(f"{path}: {name} differs from {names[0]} beyond the process index")
            status = 1
    indices = []
    for name in names:
        for container in resources[name]["Properties"]["ContainerDefinitions"]:
            for entry in container["Environment"]:
                if isinstance(entry, dict) and entry.get("Name") == "PAGEFLOW__CLUSTER__PROCESS":
                    indices.append(entry["Value"])
    if indices != [str(i) for i in range(len(names))]:
        print(f"{path}: process indices {indices} in {names}; expected 0..{len(names) - 1} in order")
        status = 1
sys.exit(status)
PY

say "ok: cfn-lint clean, no failed checkov check, task definitions in step"
