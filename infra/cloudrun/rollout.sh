#!/usr/bin/env bash
# The staged rollout of groupcast on Cloud Run, region by region; cloudbuild.yaml runs
# it, infra/README.md ("Rolling out") explains it. Every setting of the service is in
# service.yaml next to this file: this script fills in its placeholders and moves
# traffic, nothing else.
#
#   rollout.sh render REGION SERVING   print service.yaml for REGION, with the revision
#                                      SERVING keeping all traffic
#   rollout.sh first                   deploy the first region of REGIONS
#   rollout.sh rest                    deploy the others, one after another
#
# Deploying a region: the new revision is created with no traffic, under the tag
# "candidate" (gcloud run services replace, which waits until it is ready); the smoke
# check ($SMOKE) runs through the tag's URL; only then does all traffic move to it. A
# failure anywhere stops the script and leaves the region's traffic where it was.
#
# Environment: PROJECT_ID, SERVICE (the Cloud Run service), IMAGE (the image to run),
# REVISION (the new revision's name is SERVICE-REVISION), REGIONS (space-separated; the
# first goes first), SMOKE (the smoke check binary, not needed to render) and, passed
# on to it, API_KEY.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=candidate

die() {
  echo "rollout: $*" >&2
  exit 1
}

# need NAME PATTERN: NAME must be set and match the extended regular expression.
need() {
  local value=${!1:-}
  [[ -n $value ]] || die "$1 is not set"
  [[ $value =~ $2 ]] || die "$1=$value does not match $2"
}

name_re='^[a-z]([-a-z0-9]*[a-z0-9])?$'
revision_re='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'

render() {
  local region=$1 serving=$2
  need PROJECT_ID '^[a-z][-a-z0-9]{4,28}[a-z0-9]$'
  need SERVICE "$name_re"
  need REVISION "$revision_re"
  need IMAGE '^[-a-z0-9.]+(:[0-9]+)?/[-a-zA-Z0-9._/]+(:[-a-zA-Z0-9._]+|@sha256:[0-9a-f]{64})$'
  need region '^[a-z]+-[a-z]+[0-9]+$'
  need serving "$name_re"
  local revision=$SERVICE-$REVISION
  ((${#revision} <= 63)) || die "revision name $revision is longer than 63 characters"
  [[ -f $here/../nats/regions/$region.env ]] ||
    die "region $region has no NATS configuration: add infra/nats/regions/$region.env"
  local out
  out=$(<"$here/service.yaml")
  out=${out//'${PROJECT_ID}'/"$PROJECT_ID"}
  out=${out//'${SERVICE}'/"$SERVICE"}
  out=${out//'${REVISION}'/"$REVISION"}
  out=${out//'${IMAGE}'/"$IMAGE"}
  out=${out//'${REGION}'/"$region"}
  out=${out//'${SERVING}'/"$serving"}
  if [[ $out =~ \$\{[^}]*\} ]]; then
    die "service.yaml has a placeholder this script does not fill: ${BASH_REMATCH[0]}"
  fi
  printf '%s\n' "$out"
}

# traffic REGION: what the service's traffic looks like there, one target a line:
# "<percent> <revision> <tag> <url>" ("-" for what a target lacks). Nothing when the
# service does not exist in REGION yet.
traffic() {
  local region=$1 found
  found=$(gcloud run services list --region="$region" \
    --filter="metadata.name=$SERVICE" --format='value(metadata.name)')
  grep -qxF "$SERVICE" <<<"$found" || return 0
  gcloud run services describe "$SERVICE" --region="$region" --format=json | python3 -c '
import json, sys
for t in json.load(sys.stdin).get("status", {}).get("traffic", []):
    print(t.get("percent", 0), t.get("revisionName", "-"), t.get("tag", "-"), t.get("url", "-"))
'
}

deploy() {
  local region=$1 revision current serving url file
  need SERVICE "$name_re"
  need REVISION "$revision_re"
  [[ -x ${SMOKE:-} ]] || die "SMOKE must name the smoke check binary"
  revision=$SERVICE-$REVISION
  current=$(traffic "$region")
  if [[ -z $current ]]; then
    echo "rollout: $region: no service $SERVICE yet; its first revision takes the traffic at once"
    serving=$revision
  else
    serving=$(awk '$1 == 100 { print $2 }' <<<"$current")
    [[ -n $serving && $(awk '$1 > 0' <<<"$current" | wc -l) -eq 1 ]] ||
      die "$region: traffic is split (percent revision tag url):"$'\n'"$current"$'\n'"send it all to one revision first (infra/README.md, Rolling back)"
  fi
  file=$(mktemp)
  render "$region" "$serving" >"$file"
  echo "rollout: $region: $revision with no traffic, tag $tag; $serving keeps the traffic"
  gcloud run services replace "$file" --region="$region"
  rm -f "$file"
  if [[ -z $current ]]; then
    # Clients are anonymous to Cloud Run; groupcast authenticates them itself.
    gcloud run services add-iam-policy-binding "$SERVICE" --region="$region" \
      --member=allUsers --role=roles/run.invoker
  fi
  url=$(traffic "$region" | awk -v tag="$tag" '$3 == tag { print $4 }')
  [[ -n $url ]] || die "$region: no URL for the tag $tag"
  echo "rollout: $region: smoke check of $url"
  "$SMOKE" -url "$url" -region "$region" ||
    die "$region: the smoke check failed; the traffic stays on $serving"
  gcloud run services update-traffic "$SERVICE" --region="$region" --to-revisions="$revision=100"
  echo "rollout: $region: all traffic on $revision (was $serving)"
}

read_regions() {
  need REGIONS '^[a-z0-9 -]+$'
  read -r -a regions <<<"$REGIONS"
  ((${#regions[@]} > 0)) || die "REGIONS is empty"
}

case ${1:-} in
render)
  (($# == 3)) || die "usage: rollout.sh render REGION SERVING"
  render "$2" "$3"
  ;;
first)
  read_regions
  deploy "${regions[0]}"
  ;;
rest)
  read_regions
  for region in "${regions[@]:1}"; do
    deploy "$region"
  done
  ;;
*)
  die "usage: rollout.sh render REGION SERVING | first | rest"
  ;;
esac
