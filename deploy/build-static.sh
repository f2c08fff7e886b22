#!/bin/sh
# build-static.sh OUTPUT [COMMAND]: the one way a release binary is built
# (COMMAND tokenproxy, the default, or walletsim), shared by the images
# (deploy/Dockerfile, deploy/walletsim/Dockerfile), by CI (`make
# test-deploy` builds tokenproxy with it and checks it starts) and by `make
# release`, so the binary CI starts is the binary the image ships. Static
# (no cgo, no libc), no local paths (-trimpath), no VCS stamp (the same
# bytes with or without .git); VERSION (environment) becomes `COMMAND
# version`. GOOS and GOARCH from the environment pick the target.
set -eu
out=${1:?usage: build-static.sh OUTPUT [tokenproxy|walletsim]}
cmd=${2:-tokenproxy}
case $cmd in tokenproxy | walletsim) ;; *) echo "build-static.sh: unknown command $cmd" >&2; exit 2 ;; esac
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")/.."
CGO_ENABLED=0 exec go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=${VERSION:-dev}" \
	-o "$out" "./cmd/$cmd"
