// ParamΔ on Azure: Azure Functions on Container Apps (kind 'functionapp') with Durable Functions on
// the Durable Task Scheduler, blob storage and an Event Grid system topic on it, all reached with one
// user-assigned managed identity. No keys or connection strings with secrets anywhere.
// Deployed by `azd up` (see README, "Deploying to Azure"). Nothing here was compiled or deployed on
// the machine these files were written on; test/infra.test.ts checks them against the code.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region for all resources (the scheduler, the Event Grid topic and a GPU profile must be available there).')
param location string

@description('Workload profile the function app runs on. The delta arithmetic is bound by storage bandwidth, not compute: keep Consumption unless you have measured otherwise (README, "Choosing a worker profile").')
@allowed([
  'Consumption'
  'Consumption-GPU-NC8as-T4'
  'Consumption-GPU-NC24-A100'
])
param workerProfile string = 'Consumption'

@description('Image the app runs; azd sets SERVICE_API_IMAGE_NAME after its first deploy, so re-provisioning keeps the deployed image.')
param apiImageName string = ''

// Container names: the same values the code defaults to (functions/settings.ts); they become both
// the containers and the PARAMDELTA_*_CONTAINER app settings.
param modelsContainer string = 'models'
param deltasContainer string = 'deltas'
param baseModelsContainer string = 'base-models'
param postedModelsContainer string = 'posted-models'
param runsContainer string = 'paramdelta-runs'

@description('PARAMDELTA_BUFFER_BYTES: chunk buffer bytes per activity.')
param bufferBytes string = '67108864'

@description('PARAMDELTA_SHARD_SIZE: largest output shard (one shard activity each).')
param shardSize string = '5GB'

@description('PARAMDELTA_HUB_OWNERS: comma-separated Hugging Face Hub owners whose repositories requests may name as inputs (hf://owner/name); empty allows none.')
param hubOwners string = ''

@description('PARAMDELTA_GATE: the default quality gate of re-posted models, as JSON ({"maxLossRatio": 1.1, "minAgreement": 0.8}); empty gates nothing (the figures are still recorded). A delta registered with its own gate uses that instead.')
param gate string = ''

@description('Durable Task Scheduler task hub; becomes PARAMDELTA_TASK_HUB, which host.json uses as hubName.')
param taskHubName string = 'paramdelta'

@description('Most replicas the app scales out to.')
param maxReplicas int = 10

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var containers = {
  models: modelsContainer
  deltas: deltasContainer
  baseModels: baseModelsContainer
  postedModels: postedModelsContainer
  runs: runsContainer
}
var appName = 'ca-api-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    containerNames: [
      modelsContainer
      deltasContainer
      baseModelsContainer
      postedModelsContainer
      runsContainer
    ]
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: {
    name: 'cr${resourceToken}'
    location: location
    tags: tags
  }
}

module scheduler 'modules/scheduler.bicep' = {
  name: 'scheduler'
  scope: rg
  params: {
    name: 'dts-${resourceToken}'
    taskHubName: taskHubName
    location: location
    tags: tags
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    registryName: registry.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    schedulerName: scheduler.outputs.name
    taskHubName: scheduler.outputs.taskHubName
  }
}

module app 'modules/containerapps.bicep' = {
  name: 'containerapps'
  scope: rg
  params: {
    environmentName: 'cae-${resourceToken}'
    appName: appName
    location: location
    tags: tags
    workerProfile: workerProfile
    imageName: apiImageName
    maxReplicas: maxReplicas
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    registryServer: registry.outputs.loginServer
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    storageAccountName: storage.outputs.name
    containers: containers
    bufferBytes: bufferBytes
    shardSize: shardSize
    hubOwners: hubOwners
    gate: gate
    schedulerEndpoint: scheduler.outputs.endpoint
    taskHubName: scheduler.outputs.taskHubName
  }
}

// The system topic only: its event subscription needs the Event Grid extension's system key, which
// exists only once the real image runs, so infra/hooks/postdeploy.sh creates it after `azd deploy`
// (README, "How the Event Grid subscription gets its key").
module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    name: 'evgt-${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
  }
}

// Outputs azd stores in .azure/<env>/.env; the postdeploy hook and the README use them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SERVICE_API_NAME string = app.outputs.name
output SERVICE_API_FQDN string = app.outputs.fqdn
output API_BASE_URL string = 'https://${app.outputs.fqdn}/api'
output FUNCTION_KEY_COMMAND string = 'az containerapp function keys list --resource-group ${rg.name} --name ${app.outputs.name} --key-type hostKey'
output EVENTGRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output BASE_MODELS_CONTAINER string = baseModelsContainer
output DURABLE_TASK_SCHEDULER_NAME string = scheduler.outputs.name
