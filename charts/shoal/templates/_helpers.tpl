{{/*
Names. The full name is cut to 52 characters: the StatefulSet's pods carry a
controller-revision-hash label `<name>-<10 characters>` that must fit in 63.
*/}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "shoal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service that gives each node pod its DNS name. */}}
{{- define "shoal.headlessService" -}}
{{- printf "%s-headless" (include "shoal.fullname" .) }}
{{- end }}

{{- define "shoal.operatorName" -}}
{{- printf "%s-operator" (include "shoal.fullname" .) }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "shoal.labels" -}}
helm.sh/chart: {{ include "shoal.chart" . }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (`node` or `operator`): call with (list $ "node"). */}}
{{- define "shoal.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "shoal.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component: call with (list $ "node"). */}}
{{- define "shoal.componentLabels" -}}
{{ include "shoal.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "shoal.nodeImage" -}}
{{- printf "%s:%s" .Values.node.image.repository (default .Chart.AppVersion .Values.node.image.tag) }}
{{- end }}

{{- define "shoal.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "shoal.nodeServiceAccountName" -}}
{{- if .Values.node.serviceAccount.create }}
{{- default (printf "%s-node" (include "shoal.fullname" .)) .Values.node.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.node.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shoal.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "shoal.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shoal.leaseName" -}}
{{- default (include "shoal.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* API keys: whether each is configured, and the Secret that holds them. */}}
{{- define "shoal.apiKeyEnabled" -}}
{{- if or .Values.apiKey.value .Values.apiKey.existingSecret }}true{{ end }}
{{- end }}

{{- define "shoal.readOnlyApiKeyEnabled" -}}
{{- if or .Values.apiKey.readOnlyValue .Values.apiKey.existingSecret }}true{{ end }}
{{- end }}

{{- define "shoal.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "shoal.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{/*
The key a ServiceMonitor scrapes /metrics with (read-only when there is one the chart knows
of), or nothing when no key is configured.
*/}}
{{- define "shoal.metricsSecretKey" -}}
{{- if .Values.apiKey.readOnlyValue }}
{{- .Values.apiKey.readOnlySecretKey }}
{{- else if include "shoal.apiKeyEnabled" . }}
{{- .Values.apiKey.secretKey }}
{{- end }}
{{- end }}

{{/*
The peers' p2p URIs with `{pod}` for the pod name; start-node.sh fills it in for this pod and
for pod 0, the one the others join through.
*/}}
{{- define "shoal.peerUriTemplate" -}}
{{- printf "http://{pod}.%s.%s.svc.%s:%d" (include "shoal.headlessService" .) .Release.Namespace .Values.clusterDomain (int .Values.node.ports.p2p) }}
{{- end }}

{{/* policy/v1 from Kubernetes 1.21 on, policy/v1beta1 before. */}}
{{- define "shoal.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}
