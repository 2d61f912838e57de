// Container Apps environment (workload profiles) and the function app: Azure Functions on Container
// Apps, `kind: 'functionapp'`, running the image the Dockerfile builds. Every app setting below is
// either read by the code, referenced by host.json, or a documented host/platform setting; none
// holds a secret (test/infra.test.ts checks the list against the code).
// API 2025-07-01 lists kind 'functionapp' for Microsoft.App/containerApps (bicep-types listing
// checked when this was written; not compiled here).
param environmentName string
param appName string
param location string
param tags object

@allowed([
  'Consumption'
  'Consumption-GPU-NC8as-T4'
  'Consumption-GPU-NC24-A100'
])
param workerProfile string
@description('Image to run; empty until azd has deployed one.')
param imageName string
param maxReplicas int

param identityId string
param identityClientId string
param registryServer string
param logAnalyticsWorkspaceId string
param applicationInsightsConnectionString string
param storageAccountName string
@description('Container names: models, deltas, baseModels, postedModels, runs.')
param containers object
param bufferBytes string
param shardSize string
param hubOwners string
param gate string
param schedulerEndpoint string
param taskHubName string

// Until `azd deploy` pushes the app's image: the bare Functions Node 22 image the Dockerfile builds
// on, a Functions host with no functions, so the first revision starts cleanly with these settings.
var placeholderImage = 'mcr.microsoft.com/azure-functions/node:4-node22'

// Per replica: the Consumption profile allows up to 4 vCPU / 8 GiB; serverless GPU profiles come as a
// whole replica (T4: 8 vCPU / 56 GiB, A100: 24 vCPU / 220 GiB). With two shard activities per replica
// (host.json) and memory-bound kernels, 2 vCPU / 4 GiB keeps both fed.
var profiles = {
  Consumption: {
    name: 'Consumption'
    cpu: '2.0'
    memory: '4Gi'
  }
  'Consumption-GPU-NC8as-T4': {
    name: 'gpu-t4'
    cpu: '8.0'
    memory: '56Gi'
  }
  'Consumption-GPU-NC24-A100': {
    name: 'gpu-a100'
    cpu: '24.0'
    memory: '220Gi'
  }
}
var profile = profiles[workerProfile]
var consumptionProfile = {
  name: 'Consumption'
  workloadProfileType: 'Consumption'
}
var workerWorkloadProfile = {
  name: profile.name
  workloadProfileType: workerProfile
}
var consumptionOnly = [
  consumptionProfile
]
var consumptionAndWorker = [
  consumptionProfile
  workerWorkloadProfile
]
var appTags = union(tags, {
  'azd-service-name': 'api'
})

resource environment 'Microsoft.App/managedEnvironments@2025-07-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    // Logs go to Azure Monitor and on to Log Analytics through the diagnostic setting below, so
    // the environment needs no workspace shared key.
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    // Consumption is always there; a GPU worker profile is added beside it when selected.
    workloadProfiles: workerProfile == 'Consumption' ? consumptionOnly : consumptionAndWorker
  }
}

// 'allLogs' covers the console and system log categories (assumed to be offered as a category group
// for managed environments, as for most resource types).
resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: environment
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource app 'Microsoft.App/containerApps@2025-07-01' = {
  name: appName
  location: location
  tags: appTags
  kind: 'functionapp'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    managedEnvironmentId: environment.id
    workloadProfileName: profile.name
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 80
        allowInsecure: false
        transport: 'auto'
      }
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'api'
          image: !empty(imageName) ? imageName : placeholderImage
          resources: {
            cpu: json(profile.cpu)
            memory: profile.memory
          }
          env: [
            {
              name: 'FUNCTIONS_WORKER_RUNTIME'
              value: 'node'
            }
            // Host storage (AzureWebJobsStorage) and the pipeline's blobs, identity-based.
            {
              name: 'AzureWebJobsStorage__accountName'
              value: storageAccountName
            }
            {
              name: 'AzureWebJobsStorage__credential'
              value: 'managedidentity'
            }
            {
              name: 'AzureWebJobsStorage__clientId'
              value: identityClientId
            }
            // What the pipeline reads (functions/settings.ts).
            {
              name: 'PARAMDELTA_STORAGE_CONNECTION'
              value: 'AzureWebJobsStorage'
            }
            {
              name: 'PARAMDELTA_MODELS_CONTAINER'
              value: containers.models
            }
            {
              name: 'PARAMDELTA_DELTAS_CONTAINER'
              value: containers.deltas
            }
            {
              name: 'PARAMDELTA_BASE_MODELS_CONTAINER'
              value: containers.baseModels
            }
            {
              name: 'PARAMDELTA_POSTED_MODELS_CONTAINER'
              value: containers.postedModels
            }
            {
              name: 'PARAMDELTA_RUNS_CONTAINER'
              value: containers.runs
            }
            {
              name: 'PARAMDELTA_BUFFER_BYTES'
              value: bufferBytes
            }
            {
              name: 'PARAMDELTA_SHARD_SIZE'
              value: shardSize
            }
            {
              name: 'PARAMDELTA_HUB_OWNERS'
              value: hubOwners
            }
            {
              name: 'PARAMDELTA_GATE'
              value: gate
            }
            // The quality gate's forward passes: the CUDA execution provider on a GPU workload profile.
            // The image must then carry onnxruntime's CUDA parts (see the Dockerfile).
            {
              name: 'PARAMDELTA_EVAL_PROVIDER'
              value: workerProfile == 'Consumption' ? 'cpu' : 'cuda'
            }
            // host.json: "hubName": "%PARAMDELTA_TASK_HUB%".
            {
              name: 'PARAMDELTA_TASK_HUB'
              value: taskHubName
            }
            // Durable backend: override host.json's Azure Storage provider with the Durable Task
            // Scheduler. The connection string names an endpoint and an identity; it holds no secret.
            {
              name: 'AzureFunctionsJobHost__extensions__durableTask__storageProvider__type'
              value: 'azureManaged'
            }
            {
              name: 'AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName'
              value: 'DURABLE_TASK_SCHEDULER_CONNECTION_STRING'
            }
            {
              name: 'DURABLE_TASK_SCHEDULER_CONNECTION_STRING'
              value: 'Endpoint=${schedulerEndpoint};Authentication=ManagedIdentity;ClientID=${identityClientId}'
            }
            // Telemetry with Entra auth (the component refuses instrumentation-key-only ingestion).
            {
              name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
              value: applicationInsightsConnectionString
            }
            {
              name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
              value: 'Authorization=AAD;ClientId=${identityClientId}'
            }
          ]
        }
      ]
      scale: {
        minReplicas: 0
        maxReplicas: maxReplicas
      }
    }
  }
}

output name string = app.name
output fqdn string = app.properties.configuration.ingress.fqdn
