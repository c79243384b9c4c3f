#!/usr/bin/env bash
# Bake a stemcell for fast boots: a stock Debian 12 VM runs Dockyard's boot script once (the
# same script every VM's user data runs: docker.io, e2fsprogs), is stopped and imaged. VMs of
# the image skip the install and still get their own engine certificate from their user data.
#
#   hack/bake-stemcell.sh aws REGION [SUBNET_ID]   # prints the AMI id (aws CLI v2, credentials)
#   hack/bake-stemcell.sh gce PROJECT ZONE         # prints the image URL (gcloud, logged in)
#   hack/bake-stemcell.sh user-data                # prints the builder's user data
#
# Then name the image in a Deployment: `stemcell: ami-...` (aws) or
# `stemcell: projects/PROJECT/global/images/NAME` (gce) — docs/providers.md.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
STAMP=$(date -u +%Y%m%d%H%M)
NAME="dockyard-stemcell-debian-12-$STAMP"

user_data() { "$PYTHON" -c 'from dockyard.providers.bootstrap import bake_cloud_config; print(bake_cloud_config(), end="")'; }

# wait_for_console SECONDS COMMAND...: until the builder's serial console says it is baked.
wait_for_console() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" 2>/dev/null | grep -q 'dockyard-boot: baked'; do
    if "$@" 2>/dev/null | grep -q 'dockyard-boot: failed'; then die "the boot script failed (see the console output)"; fi
    (( $(date +%s) < deadline )) || die "timed out waiting for the builder to bake"
    sleep 15
  done
}

bake_aws() {
  local region=${1:?usage: bake-stemcell.sh aws REGION [SUBNET_ID]} subnet=${2:-}
  local aws=(aws --region "$region")
  local file; file=$(mktemp); trap 'rm -f "$file"' RETURN
  user_data >"$file"
  local ami; ami=$("${aws[@]}" ec2 describe-images --owners 136693071363 \
    --filters 'Name=name,Values=debian-12-amd64-*' 'Name=state,Values=available' \
    --query 'sort_by(Images,&CreationDate)[-1].ImageId' --output text)
  log "builder from $ami (Debian's newest debian-12-amd64 in $region)"
  local id; id=$("${aws[@]}" ec2 run-instances --image-id "$ami" --instance-type t3.small \
    --user-data "file://$file" --metadata-options HttpTokens=required \
    ${subnet:+--subnet-id "$subnet"} \
    --tag-specifications "ResourceType=instance,Tags=[{Key=Name,Value=$NAME-builder}]" \
    --query 'Instances[0].InstanceId' --output text)
  log "builder $id: installing (a few minutes)"
  wait_for_console 1200 "${aws[@]}" ec2 get-console-output --instance-id "$id" --latest --output text
  "${aws[@]}" ec2 stop-instances --instance-ids "$id" >/dev/null
  "${aws[@]}" ec2 wait instance-stopped --instance-ids "$id"
  local image; image=$("${aws[@]}" ec2 create-image --instance-id "$id" --name "$NAME" \
    --description "Dockyard stemcell: Debian 12, docker.io, e2fsprogs" --query ImageId --output text)
  log "imaging $id as $image"
  "${aws[@]}" ec2 wait image-available --image-ids "$image"
  "${aws[@]}" ec2 terminate-instances --instance-ids "$id" >/dev/null
  echo "$image"
}

bake_gce() {
  local project=${1:?usage: bake-stemcell.sh gce PROJECT ZONE} zone=${2:?usage: bake-stemcell.sh gce PROJECT ZONE}
  local gcloud=(gcloud --project "$project" --quiet)
  local file; file=$(mktemp); trap 'rm -f "$file"' RETURN
  user_data >"$file"
  local builder="$NAME-builder"
  "${gcloud[@]}" compute instances create "$builder" --zone "$zone" --machine-type e2-small \
    --image-family debian-12 --image-project debian-cloud --metadata-from-file "user-data=$file" >/dev/null
  log "builder $builder: installing (a few minutes)"
  wait_for_console 1200 "${gcloud[@]}" compute instances get-serial-port-output "$builder" --zone "$zone"
  "${gcloud[@]}" compute instances stop "$builder" --zone "$zone" >/dev/null
  "${gcloud[@]}" compute images create "$NAME" --source-disk "$builder" --source-disk-zone "$zone" \
    --family dockyard-stemcell-debian-12 --description "Dockyard stemcell: Debian 12, docker.io, e2fsprogs" >/dev/null
  "${gcloud[@]}" compute instances delete "$builder" --zone "$zone" >/dev/null
  echo "projects/$project/global/images/$NAME"
}

case "${1:-}" in
  aws) shift; bake_aws "$@" ;;
  gce) shift; bake_gce "$@" ;;
  user-data) user_data ;;
  *) die "usage: bake-stemcell.sh aws REGION [SUBNET_ID] | gce PROJECT ZONE | user-data" ;;
esac
