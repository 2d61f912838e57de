// Event Grid system topic on the storage account. Its one subscription (BlobCreated under the base
// models container -> the baseModelUploaded trigger) is eventgrid-subscription.bicep, deployed by the
// azd postdeploy hook: the webhook URL carries the Event Grid extension's system key, which only the
// running app has and which must never be an app setting or a deployment output.
param name string
param location string
param tags object
param storageAccountName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = topic.name
