{{- define "edgetrust.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgetrust.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edgetrust.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "edgetrust.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Every container: no root, no privilege escalation, no capabilities, read-only root filesystem. */}}
{{- define "edgetrust.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "edgetrust.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "edgetrust.webhookService" -}}
{{ include "edgetrust.fullname" . }}-webhook
{{- end -}}

{{/* Namespaces never sent to the webhook: the configured ones and the release's own. */}}
{{- define "edgetrust.exemptNamespaces" -}}
{{- $all := append .Values.webhook.exemptNamespaces .Release.Namespace | uniq -}}
{{ toJson $all }}
{{- end -}}

{{- define "edgetrust.webhookRules" -}}
rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE, UPDATE]
    resources: [pods, pods/ephemeralcontainers, replicationcontrollers]
    scope: Namespaced
  - apiGroups: [apps]
    apiVersions: [v1]
    operations: [CREATE, UPDATE]
    resources: [deployments, statefulsets, daemonsets, replicasets]
    scope: Namespaced
  - apiGroups: [batch]
    apiVersions: [v1]
    operations: [CREATE, UPDATE]
    resources: [jobs, cronjobs]
    scope: Namespaced
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ include "edgetrust.exemptNamespaces" . }}
    - key: edgetrust.io/ignore
      operator: DoesNotExist
failurePolicy: {{ .Values.webhook.failurePolicy }}
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
sideEffects: None
admissionReviewVersions: [v1]
matchPolicy: Equivalent
{{- with .Values.webhook.matchConditions }}
matchConditions: {{ toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "edgetrust.hubService" -}}
{{ include "edgetrust.fullname" . }}-hub
{{- end -}}

{{/* The names the hub's serving certificate carries: its Service's, and hub.dnsNames. */}}
{{- define "edgetrust.hubDNSNames" -}}
{{- $svc := include "edgetrust.hubService" . -}}
{{- $ns := .Release.Namespace -}}
{{- $own := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{ concat $own .Values.hub.dnsNames | uniq | toJson }}
{{- end -}}

{{/*
The hub a component talks to: the one given, else this release's hub Service (a name its certificate carries),
else empty (templates/checks.yaml refuses that with the way to give one).
*/}}
{{- define "edgetrust.hubURL" -}}
{{- $given := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $given -}}
{{ $given }}
{{- else if $root.Values.hub.enabled -}}
{{ printf "https://%s.%s.svc:%v" (include "edgetrust.hubService" $root) $root.Release.Namespace $root.Values.hub.port }}
{{- end -}}
{{- end -}}

{{- /*
The cluster's X.509-SVID for the syncer and the webhook: from the node agent's Workload API (the host's socket
directory, read-only; the agent issues and renews it, the key stays in the pod's memory), or, only when
syncer.svidFallbackSecret is set, from that Secret (a cluster without the node agent: nothing renews it).
*/}}
{{- define "edgetrust.workloadApiEnv" -}}
{{- if not .Values.syncer.svidFallbackSecret }}
- {name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///run/spiffe/api.sock"}
{{- end }}
{{- end }}

{{- define "edgetrust.clusterSvidMount" -}}
{{- if .Values.syncer.svidFallbackSecret }}
- {name: svid, mountPath: /etc/edgetrust/svid, readOnly: true}
{{- else }}
- {name: workload-api, mountPath: /run/spiffe, readOnly: true}
{{- end }}
{{- end }}

{{- define "edgetrust.clusterSvidVolume" -}}
{{- if .Values.syncer.svidFallbackSecret }}
- name: svid
  secret:
    secretName: {{ .Values.syncer.svidFallbackSecret }}
    defaultMode: 0400
{{- else }}
- name: workload-api
  hostPath: {path: {{ .Values.nodeAgent.socketDir }}, type: Directory}
{{- end }}
{{- end }}

{{- /* "true" when the webhook follows the bundles the syncer accepts (both enabled, webhook.followBundles), else
"": the syncer then hands each bundle over in ConfigMap edgetrust-admission-bundle and every replica swaps it in */}}
{{- define "edgetrust.followBundles" -}}
{{- if and .Values.webhook.enabled .Values.syncer.enabled .Values.webhook.followBundles -}}true{{- end -}}
{{- end }}

{{- /* the publisher keys the webhook verifies bundles with: webhook.bundleKeys, or (following the syncer and none
given) syncer.verificationKeys: one list of keys, not two to keep in step */}}
{{- define "edgetrust.webhookBundleKeys" -}}
{{- $keys := .Values.webhook.bundleKeys -}}
{{- if and (not $keys) (include "edgetrust.followBundles" .) -}}{{- $keys = .Values.syncer.verificationKeys -}}{{- end -}}
{{- toJson $keys -}}
{{- end }}

{{- /* "true" when the webhook refuses bindings to nodes the hub does not show attested (webhook.nodeAttestation:
true, or auto with the syncer, the node agent and the hub's revocation key all given: the whole plane), else "" */}}
{{- define "edgetrust.nodeAttestation" -}}
{{- $on := toString .Values.webhook.nodeAttestation.enabled -}}
{{- if and .Values.webhook.enabled .Values.syncer.enabled -}}
{{- if eq $on "true" -}}true
{{- else if and (eq $on "auto") .Values.nodeAgent.enabled .Values.syncer.revocationKey -}}true
{{- end -}}
{{- end -}}
{{- end }}

{{/* The hub's PKCS#11 token (hub.pkcs11): the flags, the PIN Secret mounted as a file, the module's own volumes. */}}
{{- define "edgetrust.hubTokenArgs" -}}
- --pkcs11-module={{ .Values.hub.pkcs11.module }}
- --pkcs11-token={{ .Values.hub.pkcs11.tokenLabel }}
- --pkcs11-pin-file=/etc/edgetrust/pkcs11/pin
{{- end }}

{{- define "edgetrust.hubTokenMounts" -}}
- {name: pkcs11-pin, mountPath: /etc/edgetrust/pkcs11, readOnly: true}
{{- with .Values.hub.pkcs11.volumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "edgetrust.hubTokenVolumes" -}}
- name: pkcs11-pin
  secret:
    secretName: {{ .Values.hub.pkcs11.pinSecret }}
    defaultMode: 0400
    items:
      - {key: pin, path: pin}
{{- with .Values.hub.pkcs11.volumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
