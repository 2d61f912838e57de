// Durable Task Scheduler and its task hub: the Durable Functions backend in Azure. Container Apps
// scales Durable Functions only on this backend (or MSSQL). Local runs keep the Azure Storage
// backend on Azurite: host.json stays storage-backed and the app settings override it here
// (containerapps.bicep).
// API 2025-11-01 and the property shapes (sku.name, a required non-empty ipAllowlist) follow the
// Azure samples and the bicep-types listing checked when this was written; not compiled here.
param name string
param taskHubName string
param location string
param tags object

@allowed([
  'Consumption'
  'Dedicated'
])
param skuName string = 'Consumption'

resource scheduler 'Microsoft.DurableTask/schedulers@2025-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: { name: skuName }
    // Data-plane calls still need an Entra token with "Durable Task Data Contributor"; an empty list
    // would refuse everyone.
    ipAllowlist: [
      '0.0.0.0/0'
    ]
  }
}

resource taskHub 'Microsoft.DurableTask/schedulers/taskHubs@2025-11-01' = {
  parent: scheduler
  name: taskHubName
}

output name string = scheduler.name
output endpoint string = scheduler.properties.endpoint
output taskHubName string = taskHub.name
