#!/bin/sh
# build-static.sh OUTPUT: the one way the walletsim release binary is built,
# shared by deploy/walletsim/Dockerfile and `make release` (as
# deploy/build-static.sh is for tokenproxy). Static (no cgo, no libc), no
# local paths (-trimpath), no VCS stamp; VERSION (environment) becomes
# `walletsim version`. GOOS and GOARCH from the environment pick the target.
set -eu
out=${1:?usage: build-static.sh OUTPUT}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")/../.."
CGO_ENABLED=0 exec go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=${VERSION:-dev}" \
	-o "$out" ./cmd/walletsim
