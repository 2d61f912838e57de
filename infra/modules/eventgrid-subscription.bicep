// BlobCreated events under the base models container, delivered to the baseModelUploaded Event Grid
// trigger (functions/triggers/baseModelUploaded.ts), which re-posts every registered delta onto a
// newly complete base model.
//
// Deployed by infra/hooks/postdeploy.sh after `azd deploy`, not by main.bicep: the webhook must carry
// the Event Grid extension's system key (`code=`), and Container Apps has no template-time way to
// read it (Microsoft.App/containerApps offers no listKeys-style function for host keys; the host
// creates the key when it first loads the extension). The key arrives here as a secure parameter,
// which ARM keeps out of the deployment history; Event Grid returns only the endpoint's base URL.
// Creating or updating the subscription makes Event Grid send a validation event, which the
// Functions Event Grid extension answers.
param systemTopicName string
@description('Host name of the function app (SERVICE_API_FQDN).')
param appFqdn string
@description('Container whose new blobs mean a new base model (PARAMDELTA_BASE_MODELS_CONTAINER).')
param baseModelsContainer string
@description('The Event Grid trigger function (functions/catalog.ts, eventGridTriggers).')
param functionName string = 'baseModelUploaded'
@secure()
@description('System key "eventgrid_extension" of the running app.')
param eventGridSystemKey string

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  name: 'base-model-uploaded'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${appFqdn}/runtime/webhooks/eventgrid?functionName=${functionName}&code=${eventGridSystemKey}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${baseModelsContainer}/'
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
