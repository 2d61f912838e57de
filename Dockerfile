# The function app image: Azure Functions host for Node 20 with the compiled app in /home/site/wwwroot.

# Build: compile TypeScript (tsc -> dist/), then drop the dev dependencies.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY lib ./lib
COPY cli ./cli
COPY functions ./functions
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

# Run: the official Functions image; package.json "main" points the host at dist/functions/index.js.
FROM mcr.microsoft.com/azure-functions/node:4-node20
ENV AzureWebJobsScriptRoot=/home/site/wwwroot \
    AzureFunctionsJobHost__Logging__Console__IsEnabled=true
WORKDIR /home/site/wwwroot
COPY --from=build /src/package.json ./package.json
COPY host.json ./host.json
COPY --from=build /src/dist ./dist
COPY --from=build /src/node_modules ./node_modules
