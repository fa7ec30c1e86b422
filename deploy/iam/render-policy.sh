#!/usr/bin/env bash
# Renders one of pageflow's IAM policy templates (deploy/iam/*.json) to stdout, with the
# placeholders replaced by real names. See deploy/iam/README.md.
#
#   deploy/iam/render-policy.sh [--policy task|collector|firehose-delivery|firehose-trust] REGION ACCOUNT_ID [STREAM_PREFIX]
#
# Names other than the region, the account and the portal-stream prefix come from the environment
# (defaults in brackets):
#
#   FEATURES_STREAM        the features stream                          [pageflow-features]
#   CONSUMER_NAME          the enhanced fan-out consumer name           [pageflow]
#   FIREHOSE_RAW           delivery stream of the raw layer             [pageflow-raw]
#   FIREHOSE_PROCESSED     delivery stream of the processed layer       [pageflow-processed]
#   FIREHOSE_DEAD_LETTER   delivery stream of the dead-letter layer     [pageflow-dead-letter]
#   CHECKPOINT_BUCKET      checkpoint bucket; unset = no S3 statements  []
#   CHECKPOINT_PREFIX      key prefix of the checkpoints, no slashes at the ends [pageflow/checkpoints]
#   PERSONALIZE_PREFIX     name prefix of the Personalize campaigns, recommenders, filters and
#                          event trackers; unset = no Personalize statements []
#   KMS_KEY_ID             id of the customer managed key of encrypted streams; unset = no KMS
#                          statements []
#   ARCHIVE_BUCKET         archive bucket (firehose-delivery only; required there) []
#   QUEUE_PREFIX           name prefix of the collector's SQS buffer queues (collector only)
#                                                                       [pageflow-]
#   OMIT                   space-separated Sids of further statements to leave out []
#
# STREAM_PREFIX (default "pageflow-") selects the portal streams: stream/STREAM_PREFIX*.
# The output is the template with the statements of features you do not use left out, so it can be
# piped straight into `aws iam put-role-policy --policy-document file:///dev/stdin`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

fail() {
    echo "render-policy.sh: $*" >&2
    exit 2
}

policy=task
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --policy)
            [[ $# -ge 2 ]] || fail "--policy needs a value"
            policy="$2"
            shift 2
            ;;
        --policy=*)
            policy="${1#--policy=}"
            shift
            ;;
        --)
            shift
            break
            ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done

[[ $# -ge 2 && $# -le 3 ]] || {
    usage >&2
    exit 2
}

REGION="$1"
ACCOUNT_ID="$2"
STREAM_PREFIX="${3:-pageflow-}"
FEATURES_STREAM="${FEATURES_STREAM:-pageflow-features}"
CONSUMER_NAME="${CONSUMER_NAME:-pageflow}"
FIREHOSE_RAW="${FIREHOSE_RAW:-pageflow-raw}"
FIREHOSE_PROCESSED="${FIREHOSE_PROCESSED:-pageflow-processed}"
FIREHOSE_DEAD_LETTER="${FIREHOSE_DEAD_LETTER:-pageflow-dead-letter}"
CHECKPOINT_BUCKET="${CHECKPOINT_BUCKET:-}"
CHECKPOINT_PREFIX="${CHECKPOINT_PREFIX:-pageflow/checkpoints}"
PERSONALIZE_PREFIX="${PERSONALIZE_PREFIX:-}"
KMS_KEY_ID="${KMS_KEY_ID:-}"
ARCHIVE_BUCKET="${ARCHIVE_BUCKET:-}"
QUEUE_PREFIX="${QUEUE_PREFIX:-pageflow-}"
OMIT="${OMIT:-}"

[[ "$REGION" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || fail "REGION '$REGION' is not a region name such as eu-west-1"
[[ "$ACCOUNT_ID" =~ ^[0-9]{12}$ ]] || fail "ACCOUNT_ID '$ACCOUNT_ID' is not a 12-digit account id"

# Names end up inside ARNs and JSON strings: no quotes, backslashes, spaces or wildcards.
check_name() {
    local variable="$1" value="$2"
    [[ -z "$value" || "$value" =~ ^[A-Za-z0-9._/:-]+$ ]] ||
        fail "$variable '$value' may contain only letters, digits and . _ / : -"
}
for variable in STREAM_PREFIX FEATURES_STREAM CONSUMER_NAME FIREHOSE_RAW FIREHOSE_PROCESSED \
    FIREHOSE_DEAD_LETTER CHECKPOINT_BUCKET CHECKPOINT_PREFIX PERSONALIZE_PREFIX KMS_KEY_ID \
    ARCHIVE_BUCKET QUEUE_PREFIX; do
    check_name "$variable" "${!variable}"
done
[[ -n "$STREAM_PREFIX" ]] || fail "STREAM_PREFIX must not be empty (it would grant every stream of the account)"
[[ "$CHECKPOINT_PREFIX" != /* && "$CHECKPOINT_PREFIX" != */ && -n "$CHECKPOINT_PREFIX" ]] ||
    fail "CHECKPOINT_PREFIX '$CHECKPOINT_PREFIX' must be non-empty, without a leading or trailing /"

# Statements left out because the feature they serve is not configured.
omitted="$OMIT"
case "$policy" in
    task)
        template="$here/pageflow-task-policy.json"
        if [[ -z "$CHECKPOINT_BUCKET" ]]; then
            omitted+=" ListCheckpoints CheckpointsInS3 KmsCheckpointObjects"
        fi
        if [[ -z "$PERSONALIZE_PREFIX" ]]; then
            omitted+=" PersonalizeRecommendations PersonalizeEvents"
        fi
        if [[ -z "$KMS_KEY_ID" ]]; then
            omitted+=" KmsDecryptPortalStreams KmsEncryptFeaturesStream KmsCheckpointObjects"
        fi
        ;;
    collector)
        template="$here/pageflow-collector-policy.json"
        [[ -n "$QUEUE_PREFIX" ]] || fail "QUEUE_PREFIX must not be empty (it would grant every queue of the account)"
        if [[ -z "$KMS_KEY_ID" ]]; then
            omitted+=" KmsEncryptPortalStreams KmsBufferQueues"
        fi
        ;;
    firehose-delivery)
        template="$here/firehose-delivery-role-policy.json"
        [[ -n "$ARCHIVE_BUCKET" ]] || fail "ARCHIVE_BUCKET must be set for --policy firehose-delivery"
        ;;
    firehose-trust)
        template="$here/firehose-trust-policy.json"
        ;;
    *) fail "unknown policy '$policy' (task, collector, firehose-delivery or firehose-trust)" ;;
esac

read -r -a omitted_sids <<<"$omitted"
for sid in "${omitted_sids[@]}"; do
    grep -q "^      \"Sid\": \"${sid}\",\$" "$template" || fail "OMIT names '$sid', which is no Sid of $template"
done
if [[ ${#omitted_sids[@]} -gt 0 ]]; then
    echo "render-policy.sh: leaving out ${omitted_sids[*]}" >&2
fi

# Escapes a value for the replacement side of a sed `s|…|…|` command.
sed_value() {
    printf '%s' "$1" | sed -e 's/[|&\\]/\\&/g'
}

substitutions=()
for placeholder in REGION ACCOUNT_ID STREAM_PREFIX FEATURES_STREAM CONSUMER_NAME FIREHOSE_RAW \
    FIREHOSE_PROCESSED FIREHOSE_DEAD_LETTER CHECKPOINT_BUCKET CHECKPOINT_PREFIX \
    PERSONALIZE_PREFIX KMS_KEY_ID ARCHIVE_BUCKET QUEUE_PREFIX; do
    substitutions+=(-e "s|${placeholder}|$(sed_value "${!placeholder}")|g")
done

# The templates keep one layout that this relies on (tests/tests/integration/iam_policy.rs checks it): the
# statement list opens with the line `  "Statement": [`, each statement starts with the line `    {`,
# has `      "Sid": "…",` as its first member and ends with the line `    }` or `    },`.
sed "${substitutions[@]}" "$template" | awk -v omit=" ${omitted} " '
    function flush() {
        sub(/,$/, "", statement)
        if (index(omit, " " sid " ") == 0) {
            if (kept++) printf ",\n"
            printf "%s", statement
        }
    }
    state == 0 { print; if ($0 ~ /^  "Statement": \[$/) state = 1; next }
    state == 1 && /^    \{$/ { statement = $0; sid = ""; state = 2; next }
    state == 2 {
        statement = statement "\n" $0
        if ($0 ~ /^      "Sid": "/) { sid = $0; sub(/^      "Sid": "/, "", sid); sub(/",?$/, "", sid) }
        if ($0 ~ /^    \},?$/) { flush(); state = 1 }
        next
    }
    state == 1 { if (kept) printf "\n"; print; state = 3; next }
    { print }
    END {
        if (state != 3) { print "render-policy.sh: unexpected template layout" > "/dev/stderr"; exit 1 }
        if (kept == 0) { print "render-policy.sh: every statement was left out" > "/dev/stderr"; exit 1 }
    }
'
