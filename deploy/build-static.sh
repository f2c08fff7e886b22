#!/bin/sh
# build-static.sh OUTPUT: the one way the tokenproxy release binary is built,
# shared by deploy/Dockerfile and by CI (`make test-deploy`), so the binary CI
# starts is the binary the image ships. Static (no cgo, no libc), no local
# paths (-trimpath), no VCS stamp (the same bytes with or without .git);
# VERSION (environment) becomes `tokenproxy version`.
set -eu
out=${1:?usage: build-static.sh OUTPUT}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")/.."
CGO_ENABLED=0 exec go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=${VERSION:-dev}" \
	-o "$out" ./cmd/tokenproxy
