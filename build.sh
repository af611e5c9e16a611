#!/usr/bin/env bash
# Build the ISDR image, tagged with the package's version and "latest".
# Usage: ./build.sh [image-name]      (default: isdr)
set -euo pipefail
cd "$(dirname "$0")"

image="${1:-isdr}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
if [ -z "$version" ]; then
    echo "build.sh: no version found in pyproject.toml" >&2
    exit 1
fi

docker build --tag "${image}:${version}" --tag "${image}:latest" .
echo "built ${image}:${version} (also ${image}:latest)"
