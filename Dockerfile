# The function app image: Azure Functions host for Node 22 with the compiled app in /home/site/wwwroot.

# Build: compile TypeScript (tsc -> dist/), then drop the dev dependencies.
FROM node:22-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# zstd-napi compiles its native binding; onnxruntime-node ships its CPU binary (CUDA parts only in the GPU image).
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
# The GPU image (workerProfile Consumption-GPU-*, where the app sets PARAMDELTA_EVAL_PROVIDER=cuda) is built with
# `--build-arg ORT_INSTALL=cuda12`: onnxruntime-node's install script then fetches its CUDA 12 execution
# provider. That provider also needs the CUDA 12 runtime and cuDNN 9 libraries in the final image, which
# the Functions base image lacks: add them there (e.g. NVIDIA's cuda-runtime and cudnn packages) for that image.
# Not built or run on a GPU in this project so far.
ARG ORT_INSTALL=skip
ENV ONNXRUNTIME_NODE_INSTALL=${ORT_INSTALL}
# zstd-napi compiles from the zstd sources in its npm package against this image's own Node headers:
# no prebuilt binary from GitHub, no headers from nodejs.org; only the npm registry is reached.
ENV npm_config_build_from_source=true npm_config_nodedir=/usr/local
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY lib ./lib
COPY cli ./cli
COPY functions ./functions
COPY bench ./bench
# build/: the build's own steps (the prebuilt WebAssembly pack).
COPY build ./build
# The dashboard (web/, Vite) is built into dist/web by the same `npm run build`.
COPY web ./web
RUN npm run build && npm prune --omit=dev

# Run: the official Functions image; package.json "main" points the host at dist/functions/index.js.
FROM mcr.microsoft.com/azure-functions/node:4-node22
ENV AzureWebJobsScriptRoot=/home/site/wwwroot \
    AzureFunctionsJobHost__Logging__Console__IsEnabled=true
WORKDIR /home/site/wwwroot
COPY --from=build /src/package.json ./package.json
COPY host.json ./host.json
COPY --from=build /src/dist ./dist
COPY --from=build /src/node_modules ./node_modules
