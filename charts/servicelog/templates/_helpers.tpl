{{/*
Names, labels and computed settings shared by the templates.

Cluster-scoped objects (ClusterRole, ClusterRoleBinding, webhook configurations) are named
after the fullname, so two releases never fight over one object.
*/}}

{{- define "servicelog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: the release name, prefixed with the chart name unless it already
contains it. Truncated so that suffixed names ("-zookeeper-headless") stay DNS labels.
*/}}
{{- define "servicelog.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "servicelog.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "servicelog.labels" -}}
helm.sh/chart: {{ include "servicelog.chart" . }}
{{ include "servicelog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: servicelog
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "servicelog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "servicelog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: pass (dict "ctx" $ "component" "operator"). */}}
{{- define "servicelog.componentLabels" -}}
{{ include "servicelog.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "servicelog.componentSelectorLabels" -}}
{{ include "servicelog.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "servicelog.operator.name" -}}
{{- printf "%s-operator" (include "servicelog.fullname" .) }}
{{- end }}

{{- define "servicelog.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "servicelog.operator.name" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "servicelog.webhook.service" -}}
{{- printf "%s-webhook" (include "servicelog.fullname" .) }}
{{- end }}

{{/* Name of both webhook configurations (--webhook-configuration). */}}
{{- define "servicelog.webhook.configuration" -}}
{{- include "servicelog.fullname" . }}
{{- end }}

{{- define "servicelog.webhook.certificate" -}}
{{- printf "%s-webhook" (include "servicelog.fullname" .) }}
{{- end }}

{{- define "servicelog.webhook.certSecret" -}}
{{- printf "%s-webhook-cert" (include "servicelog.fullname" .) }}
{{- end }}

{{- define "servicelog.webhook.issuer" -}}
{{- printf "%s-selfsigned" (include "servicelog.fullname" .) }}
{{- end }}

{{/* Whether the webhooks are reached through the in-cluster Service (not webhook.url). */}}
{{- define "servicelog.webhook.inCluster" -}}
{{- if not .Values.webhook.url }}true{{ end }}
{{- end }}

{{/* Whether the operator keeps its own CA in a Secret and the configurations' caBundle. */}}
{{- define "servicelog.webhook.selfManagedTLS" -}}
{{- if not .Values.webhook.certManager.enabled }}true{{ end }}
{{- end }}

{{- define "servicelog.zookeeper.name" -}}
{{- printf "%s-zookeeper" (include "servicelog.fullname" .) }}
{{- end }}

{{- define "servicelog.zookeeper.headless" -}}
{{- printf "%s-zookeeper-headless" (include "servicelog.fullname" .) }}
{{- end }}

{{/* host:port of embedded ZooKeeper server number $i (0-based), fully qualified. */}}
{{- define "servicelog.zookeeper.host" -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "servicelog.zookeeper.name" .ctx) (int .i) (include "servicelog.zookeeper.headless" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{/*
The operator's --zk-connect: the embedded StatefulSet's pods, or zookeeper.connect
(templates/validate.yaml refuses both at once).
*/}}
{{- define "servicelog.zkConnect" -}}
{{- $zk := .Values.zookeeper }}
{{- if $zk.embedded.enabled }}
{{- $hosts := list }}
{{- range $i := until (int $zk.embedded.replicas) }}
{{- $hosts = append $hosts (printf "%s:%d" (include "servicelog.zookeeper.host" (dict "ctx" $ "i" $i)) (int $zk.embedded.clientPort)) }}
{{- end }}
{{- join "," $hosts }}
{{- else }}
{{- required "zookeeper.connect is required when zookeeper.embedded.enabled is false (e.g. zk-0.zk:2181,zk-1.zk:2181)" $zk.connect }}
{{- end }}
{{- end }}

{{/* The sidecar pre-pull DaemonSet; the operator's DaemonSet for per-ServiceLog images is
this name with `-extra`. */}}
{{- define "servicelog.prepull.name" -}}
{{- printf "%s-sidecar-prepull" (include "servicelog.fullname" .) | trunc 57 | trimSuffix "-" }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "servicelog.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* {cpu: 10m, memory: 16Mi} → cpu=10m,memory=16Mi (the operator's --sidecar-requests form). */}}
{{- define "servicelog.quantities" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The Secret holding the operator's ZooKeeper identity (key `auth`). */}}
{{- define "servicelog.zkAuthSecret" -}}
{{- .Values.zookeeper.auth.existingSecret | default (printf "%s-zk-auth" (include "servicelog.fullname" .)) }}
{{- end }}

{{/* What the operator needs in each namespace it watches: its resource, pod metadata for
status, Events, and the namespace's ZooKeeper identity Secret (written, never read). */}}
{{- define "servicelog.operator.namespacedRules" -}}
- apiGroups: [servicelog.io]
  resources: [servicelogs]
  verbs: [get, list, watch, patch, update]
- apiGroups: [servicelog.io]
  resources: [servicelogs/status]
  verbs: [get, patch, update]
- apiGroups: [servicelog.io]
  resources: [servicelogs/finalizers]
  verbs: [update]
# Counted for status (matched, injected); metadata only.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- $tls := .Values.zookeeper.tls }}
{{- $writeCa := and $tls.enabled $tls.writeCa (not $tls.clientCert) }}
{{- if or .Values.zookeeper.auth.enabled $writeCa }}
# Each namespace's ZooKeeper identity (`servicelog-zk-auth`) and, over TLS, the CA its
# sidecars verify ZooKeeper with, written by server-side apply: no get, list or watch on
# any Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  resourceNames:
    {{- if .Values.zookeeper.auth.enabled }}
    - servicelog-zk-auth
    {{- end }}
    {{- if $writeCa }}
    - {{ $tls.sidecarSecret | default $tls.caSecret }}
    {{- end }}
  verbs: [patch]
{{- end }}
{{- end }}
