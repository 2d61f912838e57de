#!/bin/sh
# azd postdeploy hook (azure.yaml): subscribe the baseModelUploaded Event Grid trigger to BlobCreated
# events under the base models container.
#
# Why here and not in main.bicep: the webhook URL must carry the Event Grid extension's system key,
# which the Functions host creates when it first loads the extension, so it exists only once the real
# image runs (after `azd deploy`), and Container Apps offers no template-time way to read it. The key
# goes from `az` into a private temp file and from there into a @secure() template parameter: it is
# never printed, never an app setting, never a deployment output.
#
# Needs: Azure CLI signed in (`az login`; azd's own sign-in is separate), the containerapp extension
# (added below), curl. Values come from the azd environment: AZURE_SUBSCRIPTION_ID from azd, the
# rest from main.bicep outputs.
set -eu

: "${AZURE_SUBSCRIPTION_ID:?run this through azd (azd up / azd deploy)}"
: "${AZURE_RESOURCE_GROUP:?run this through azd (azd up / azd deploy)}"
: "${SERVICE_API_NAME:?missing; run azd provision first}"
: "${SERVICE_API_FQDN:?missing; run azd provision first}"
: "${EVENTGRID_SYSTEM_TOPIC_NAME:?missing; run azd provision first}"
: "${BASE_MODELS_CONTAINER:?missing; run azd provision first}"

az extension add --name containerapp --upgrade --only-show-errors >/dev/null

# The app scales to zero: an HTTP request wakes a replica, and reading the key needs one running.
wake() {
  curl --silent --output /dev/null --max-time 60 "https://${SERVICE_API_FQDN}/" || true
}

echo "postdeploy: waiting for the function host to create its Event Grid system key..."
key=""
attempt=0
while [ -z "$key" ] && [ "$attempt" -lt 20 ]; do
  attempt=$((attempt + 1))
  wake
  # `--query value` assumes the key object is {name, value}; errors are discarded so that nothing
  # the CLI echoes can carry the key into the log.
  key=$(az containerapp function keys show \
    --subscription "$AZURE_SUBSCRIPTION_ID" \
    --resource-group "$AZURE_RESOURCE_GROUP" \
    --name "$SERVICE_API_NAME" \
    --key-type systemKey \
    --key-name eventgrid_extension \
    --query "value || properties.value" \
    --output tsv 2>/dev/null || true)
  [ -n "$key" ] || sleep 15
done
if [ -z "$key" ]; then
  echo "postdeploy: could not read the eventgrid_extension system key of ${SERVICE_API_NAME}." >&2
  echo "  Check the app started (az containerapp logs show -g ${AZURE_RESOURCE_GROUP} -n ${SERVICE_API_NAME})," >&2
  echo "  then rerun: azd hooks run postdeploy" >&2
  exit 1
fi

umask 077
params=$(mktemp)
trap 'rm -f "$params"' EXIT INT TERM
printf '{"$schema":"https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#","contentVersion":"1.0.0.0","parameters":{"eventGridSystemKey":{"value":"%s"}}}\n' "$key" >"$params"
key=""

echo "postdeploy: creating the Event Grid subscription (Event Grid validates the webhook now)..."
az deployment group create \
  --subscription "$AZURE_SUBSCRIPTION_ID" \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --name eventgrid-subscription \
  --template-file infra/modules/eventgrid-subscription.bicep \
  --parameters systemTopicName="$EVENTGRID_SYSTEM_TOPIC_NAME" \
               appFqdn="$SERVICE_API_FQDN" \
               baseModelsContainer="$BASE_MODELS_CONTAINER" \
  --parameters "@$params" \
  --only-show-errors \
  --output none

echo "postdeploy: new blobs under ${BASE_MODELS_CONTAINER}/ now reach baseModelUploaded."
