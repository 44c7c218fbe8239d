//! Request bodies in Kubernetes' protocol-buffer encoding (`application/vnd.kubernetes.protobuf`),
//! which client-go's typed clients — `kubectl create …` among them — send for built-in kinds,
//! with no fallback to JSON. A body is decoded into the JSON object the same client would have
//! sent as JSON, and the request goes on the JSON way; answers stay JSON, which those clients
//! accept.
//!
//! The envelope is the magic `k8s\0` and a `runtime.Unknown` (field 1 the type meta: apiVersion
//! 1, kind 2; field 2 the object's own encoding; 3 a content encoding). The
//! objects are read by the tables below: Kubernetes' field numbers and JSON names for the kinds
//! and fields that typed clients create here. Go writes every non-pointer field, set or not, so a
//! field outside the tables is skipped when it holds its zero value (what Go means by unset)
//! and refused, naming it, when it holds anything else — nothing a client sent is dropped.

use base64::Engine as _;
use serde_json::{json, Map, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8; 4] = b"k8s\0";
/// Nesting deeper than this is refused rather than followed.
const DEPTH_MAX: usize = 32;

/// How a field's value reads.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    /// A Go value field: false and 0 are what it holds when unset, and JSON leaves them out.
    Bool,
    Int,
    /// A Go pointer field: present means set, false and 0 included.
    PBool,
    PInt,
    Msg(&'static [F]),
    /// A message whose fields JSON writes into the parent (Go's embedded structs).
    Inline(&'static [F]),
    /// A Go value IntOrString: the zero value (0) is what it holds when unset.
    IntOrString,
    /// A Go pointer IntOrString: present means set, 0 included.
    PIntOrString,
    Time,
    MicroTime,
    Quantity,
    /// Raw JSON bytes (RawExtension, FieldsV1).
    Raw,
}

#[derive(Clone, Copy)]
enum Card {
    One,
    Many,
    /// A map with string keys: entries of key 1 and value 2.
    Map,
}

/// A field: number, JSON name, cardinality, type.
#[derive(Clone, Copy)]
struct F(u32, &'static str, Card, Ty);

use Card::{Many, Map as M, One};
use Ty::{
    Bool, Bytes, Inline, Int, IntOrString as IOS, MicroTime, Msg, PBool, PInt, PIntOrString as PIOS, Quantity, Raw,
    Str, Time,
};

const OWNER_REFERENCE: &[F] = &[
    F(1, "kind", One, Str),
    F(3, "name", One, Str),
    F(4, "uid", One, Str),
    F(5, "apiVersion", One, Str),
    F(6, "controller", One, PBool),
    F(7, "blockOwnerDeletion", One, PBool),
];
const MANAGED_FIELDS_ENTRY: &[F] = &[
    F(1, "manager", One, Str),
    F(2, "operation", One, Str),
    F(3, "apiVersion", One, Str),
    F(4, "time", One, Time),
    F(6, "fieldsType", One, Str),
    F(7, "fieldsV1", One, Raw),
    F(8, "subresource", One, Str),
];
const OBJECT_META: &[F] = &[
    F(1, "name", One, Str),
    F(2, "generateName", One, Str),
    F(3, "namespace", One, Str),
    F(4, "selfLink", One, Str),
    F(5, "uid", One, Str),
    F(6, "resourceVersion", One, Str),
    F(7, "generation", One, Int),
    F(8, "creationTimestamp", One, Time),
    F(9, "deletionTimestamp", One, Time),
    F(10, "deletionGracePeriodSeconds", One, PInt),
    F(11, "labels", M, Str),
    F(12, "annotations", M, Str),
    F(13, "ownerReferences", Many, Msg(OWNER_REFERENCE)),
    F(14, "finalizers", Many, Str),
    F(17, "managedFields", Many, Msg(MANAGED_FIELDS_ENTRY)),
];
const LABEL_SELECTOR_REQUIREMENT: &[F] =
    &[F(1, "key", One, Str), F(2, "operator", One, Str), F(3, "values", Many, Str)];
const LABEL_SELECTOR: &[F] =
    &[F(1, "matchLabels", M, Str), F(2, "matchExpressions", Many, Msg(LABEL_SELECTOR_REQUIREMENT))];
const LOCAL_OBJECT_REFERENCE: &[F] = &[F(1, "name", One, Str)];
const OBJECT_REFERENCE: &[F] = &[
    F(1, "kind", One, Str),
    F(2, "namespace", One, Str),
    F(3, "name", One, Str),
    F(4, "uid", One, Str),
    F(5, "apiVersion", One, Str),
    F(6, "resourceVersion", One, Str),
    F(7, "fieldPath", One, Str),
];

const NAMESPACE: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "spec", One, Msg(&[F(1, "finalizers", Many, Str)])),
    F(3, "status", One, Msg(&[F(1, "phase", One, Str)])),
];
const CONFIG_MAP: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "data", M, Str),
    F(3, "binaryData", M, Bytes),
    F(4, "immutable", One, PBool),
];
const SECRET: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "data", M, Bytes),
    F(3, "type", One, Str),
    F(4, "stringData", M, Str),
    F(5, "immutable", One, PBool),
];
const SERVICE_ACCOUNT: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "secrets", Many, Msg(OBJECT_REFERENCE)),
    F(3, "imagePullSecrets", Many, Msg(LOCAL_OBJECT_REFERENCE)),
    F(4, "automountServiceAccountToken", One, PBool),
];
const SERVICE_PORT: &[F] = &[
    F(1, "name", One, Str),
    F(2, "protocol", One, Str),
    F(3, "port", One, Int),
    F(4, "targetPort", One, IOS),
    F(5, "nodePort", One, Int),
    F(6, "appProtocol", One, Str),
];
const SERVICE_SPEC: &[F] = &[
    F(1, "ports", Many, Msg(SERVICE_PORT)),
    F(2, "selector", M, Str),
    F(3, "clusterIP", One, Str),
    F(4, "type", One, Str),
    F(5, "externalIPs", Many, Str),
    F(7, "sessionAffinity", One, Str),
    F(8, "loadBalancerIP", One, Str),
    F(9, "loadBalancerSourceRanges", Many, Str),
    F(10, "externalName", One, Str),
    F(11, "externalTrafficPolicy", One, Str),
    F(12, "healthCheckNodePort", One, Int),
    F(13, "publishNotReadyAddresses", One, Bool),
    F(17, "ipFamilyPolicy", One, Str),
    F(18, "clusterIPs", Many, Str),
    F(19, "ipFamilies", Many, Str),
    F(20, "allocateLoadBalancerNodePorts", One, PBool),
    F(21, "loadBalancerClass", One, Str),
    F(22, "internalTrafficPolicy", One, Str),
    F(23, "trafficDistribution", One, Str),
];
const CONDITION: &[F] = &[
    F(1, "type", One, Str),
    F(2, "status", One, Str),
    F(3, "observedGeneration", One, Int),
    F(4, "lastTransitionTime", One, Time),
    F(5, "reason", One, Str),
    F(6, "message", One, Str),
];
const LOAD_BALANCER_INGRESS: &[F] = &[
    F(1, "ip", One, Str),
    F(2, "hostname", One, Str),
    F(3, "ipMode", One, Str),
    F(4, "ports", Many, Msg(&[F(1, "port", One, Int), F(2, "protocol", One, Str), F(3, "error", One, Str)])),
];
const SERVICE_STATUS: &[F] = &[
    F(1, "loadBalancer", One, Msg(&[F(1, "ingress", Many, Msg(LOAD_BALANCER_INGRESS))])),
    F(2, "conditions", Many, Msg(CONDITION)),
];
const SERVICE: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "spec", One, Msg(SERVICE_SPEC)),
    F(3, "status", One, Msg(SERVICE_STATUS)),
];

const CONTAINER_PORT: &[F] = &[
    F(1, "name", One, Str),
    F(2, "hostPort", One, Int),
    F(3, "containerPort", One, Int),
    F(4, "protocol", One, Str),
    F(5, "hostIP", One, Str),
];
const KEY_SELECTOR: &[F] =
    &[F(1, "", One, Inline(LOCAL_OBJECT_REFERENCE)), F(2, "key", One, Str), F(3, "optional", One, PBool)];
const ENV_VAR_SOURCE: &[F] = &[
    F(1, "fieldRef", One, Msg(&[F(1, "apiVersion", One, Str), F(2, "fieldPath", One, Str)])),
    F(
        2,
        "resourceFieldRef",
        One,
        Msg(&[F(1, "containerName", One, Str), F(2, "resource", One, Str), F(3, "divisor", One, Quantity)]),
    ),
    F(3, "configMapKeyRef", One, Msg(KEY_SELECTOR)),
    F(4, "secretKeyRef", One, Msg(KEY_SELECTOR)),
];
const ENV_VAR: &[F] = &[F(1, "name", One, Str), F(2, "value", One, Str), F(3, "valueFrom", One, Msg(ENV_VAR_SOURCE))];
const ENV_SOURCE: &[F] = &[F(1, "", One, Inline(LOCAL_OBJECT_REFERENCE)), F(2, "optional", One, PBool)];
const ENV_FROM_SOURCE: &[F] =
    &[F(1, "prefix", One, Str), F(2, "configMapRef", One, Msg(ENV_SOURCE)), F(3, "secretRef", One, Msg(ENV_SOURCE))];
const RESOURCE_REQUIREMENTS: &[F] = &[F(1, "limits", M, Quantity), F(2, "requests", M, Quantity)];
const VOLUME_MOUNT: &[F] = &[
    F(1, "name", One, Str),
    F(2, "readOnly", One, Bool),
    F(3, "mountPath", One, Str),
    F(4, "subPath", One, Str),
    F(5, "mountPropagation", One, Str),
    F(6, "subPathExpr", One, Str),
    F(7, "recursiveReadOnly", One, Str),
];
const PROBE_HANDLER: &[F] = &[
    F(1, "exec", One, Msg(&[F(1, "command", Many, Str)])),
    F(
        2,
        "httpGet",
        One,
        Msg(&[
            F(1, "path", One, Str),
            F(2, "port", One, IOS),
            F(3, "host", One, Str),
            F(4, "scheme", One, Str),
            F(5, "httpHeaders", Many, Msg(&[F(1, "name", One, Str), F(2, "value", One, Str)])),
        ]),
    ),
    F(3, "tcpSocket", One, Msg(&[F(1, "port", One, IOS), F(2, "host", One, Str)])),
    F(4, "grpc", One, Msg(&[F(1, "port", One, Int), F(2, "service", One, Str)])),
];
const PROBE: &[F] = &[
    F(1, "", One, Inline(PROBE_HANDLER)),
    F(2, "initialDelaySeconds", One, Int),
    F(3, "timeoutSeconds", One, Int),
    F(4, "periodSeconds", One, Int),
    F(5, "successThreshold", One, Int),
    F(6, "failureThreshold", One, Int),
    F(7, "terminationGracePeriodSeconds", One, PInt),
];
const KEY_TO_PATH: &[F] = &[F(1, "key", One, Str), F(2, "path", One, Str), F(3, "mode", One, PInt)];
const OBJECT_PROJECTION: &[F] = &[
    F(1, "", One, Inline(LOCAL_OBJECT_REFERENCE)),
    F(2, "items", Many, Msg(KEY_TO_PATH)),
    F(4, "optional", One, PBool),
];
const VOLUME_SOURCE: &[F] = &[
    F(1, "hostPath", One, Msg(&[F(1, "path", One, Str), F(2, "type", One, Str)])),
    F(2, "emptyDir", One, Msg(&[F(1, "medium", One, Str), F(2, "sizeLimit", One, Quantity)])),
    F(
        6,
        "secret",
        One,
        Msg(&[
            F(1, "secretName", One, Str),
            F(2, "items", Many, Msg(KEY_TO_PATH)),
            F(3, "defaultMode", One, PInt),
            F(4, "optional", One, PBool),
        ]),
    ),
    F(10, "persistentVolumeClaim", One, Msg(&[F(1, "claimName", One, Str), F(2, "readOnly", One, Bool)])),
    F(
        19,
        "configMap",
        One,
        Msg(&[
            F(1, "", One, Inline(LOCAL_OBJECT_REFERENCE)),
            F(2, "items", Many, Msg(KEY_TO_PATH)),
            F(3, "defaultMode", One, PInt),
            F(4, "optional", One, PBool),
        ]),
    ),
    F(
        26,
        "projected",
        One,
        Msg(&[
            F(
                1,
                "sources",
                Many,
                Msg(&[
                    F(1, "secret", One, Msg(OBJECT_PROJECTION)),
                    F(3, "configMap", One, Msg(OBJECT_PROJECTION)),
                    F(
                        4,
                        "serviceAccountToken",
                        One,
                        Msg(&[
                            F(1, "audience", One, Str),
                            F(2, "expirationSeconds", One, PInt),
                            F(3, "path", One, Str),
                        ]),
                    ),
                ]),
            ),
            F(2, "defaultMode", One, PInt),
        ]),
    ),
];
const VOLUME: &[F] = &[F(1, "name", One, Str), F(2, "", One, Inline(VOLUME_SOURCE))];
const CONTAINER: &[F] = &[
    F(1, "name", One, Str),
    F(2, "image", One, Str),
    F(3, "command", Many, Str),
    F(4, "args", Many, Str),
    F(5, "workingDir", One, Str),
    F(6, "ports", Many, Msg(CONTAINER_PORT)),
    F(7, "env", Many, Msg(ENV_VAR)),
    F(8, "resources", One, Msg(RESOURCE_REQUIREMENTS)),
    F(9, "volumeMounts", Many, Msg(VOLUME_MOUNT)),
    F(10, "livenessProbe", One, Msg(PROBE)),
    F(11, "readinessProbe", One, Msg(PROBE)),
    F(13, "terminationMessagePath", One, Str),
    F(14, "imagePullPolicy", One, Str),
    F(16, "stdin", One, Bool),
    F(17, "stdinOnce", One, Bool),
    F(18, "tty", One, Bool),
    F(19, "envFrom", Many, Msg(ENV_FROM_SOURCE)),
    F(20, "terminationMessagePolicy", One, Str),
    F(22, "startupProbe", One, Msg(PROBE)),
    F(24, "restartPolicy", One, Str),
];
const TOLERATION: &[F] = &[
    F(1, "key", One, Str),
    F(2, "operator", One, Str),
    F(3, "value", One, Str),
    F(4, "effect", One, Str),
    F(5, "tolerationSeconds", One, PInt),
];
const POD_SPEC: &[F] = &[
    F(1, "volumes", Many, Msg(VOLUME)),
    F(2, "containers", Many, Msg(CONTAINER)),
    F(3, "restartPolicy", One, Str),
    F(4, "terminationGracePeriodSeconds", One, PInt),
    F(5, "activeDeadlineSeconds", One, PInt),
    F(6, "dnsPolicy", One, Str),
    F(7, "nodeSelector", M, Str),
    F(8, "serviceAccountName", One, Str),
    F(9, "serviceAccount", One, Str),
    F(10, "nodeName", One, Str),
    F(11, "hostNetwork", One, Bool),
    F(12, "hostPID", One, Bool),
    F(13, "hostIPC", One, Bool),
    F(15, "imagePullSecrets", Many, Msg(LOCAL_OBJECT_REFERENCE)),
    F(16, "hostname", One, Str),
    F(17, "subdomain", One, Str),
    F(19, "schedulerName", One, Str),
    F(20, "initContainers", Many, Msg(CONTAINER)),
    F(21, "automountServiceAccountToken", One, PBool),
    F(22, "tolerations", Many, Msg(TOLERATION)),
    F(24, "priorityClassName", One, Str),
    F(25, "priority", One, PInt),
    F(27, "shareProcessNamespace", One, PBool),
    F(29, "runtimeClassName", One, Str),
    F(30, "enableServiceLinks", One, PBool),
    F(31, "preemptionPolicy", One, Str),
    F(35, "setHostnameAsFQDN", One, PBool),
    F(37, "hostUsers", One, PBool),
];
const POD_TEMPLATE_SPEC: &[F] = &[F(1, "metadata", One, Msg(OBJECT_META)), F(2, "spec", One, Msg(POD_SPEC))];
const POD: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "spec", One, Msg(POD_SPEC)),
    F(3, "status", One, Msg(&[F(1, "phase", One, Str), F(3, "message", One, Str), F(4, "reason", One, Str)])),
];
const BINDING: &[F] = &[F(1, "metadata", One, Msg(OBJECT_META)), F(2, "target", One, Msg(OBJECT_REFERENCE))];
const DEPLOYMENT_SPEC: &[F] = &[
    F(1, "replicas", One, PInt),
    F(2, "selector", One, Msg(LABEL_SELECTOR)),
    F(3, "template", One, Msg(POD_TEMPLATE_SPEC)),
    F(
        4,
        "strategy",
        One,
        Msg(&[
            F(1, "type", One, Str),
            F(2, "rollingUpdate", One, Msg(&[F(1, "maxUnavailable", One, PIOS), F(2, "maxSurge", One, PIOS)])),
        ]),
    ),
    F(5, "minReadySeconds", One, Int),
    F(6, "revisionHistoryLimit", One, PInt),
    F(7, "paused", One, Bool),
    F(9, "progressDeadlineSeconds", One, PInt),
];
const DEPLOYMENT_STATUS: &[F] = &[
    F(1, "observedGeneration", One, Int),
    F(2, "replicas", One, Int),
    F(3, "updatedReplicas", One, Int),
    F(4, "availableReplicas", One, Int),
    F(5, "unavailableReplicas", One, Int),
    F(
        6,
        "conditions",
        Many,
        Msg(&[
            F(1, "type", One, Str),
            F(2, "status", One, Str),
            F(4, "reason", One, Str),
            F(5, "message", One, Str),
            F(6, "lastUpdateTime", One, Time),
            F(7, "lastTransitionTime", One, Time),
        ]),
    ),
    F(7, "readyReplicas", One, Int),
    F(8, "collisionCount", One, PInt),
    F(9, "terminatingReplicas", One, PInt),
];
const DEPLOYMENT: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "spec", One, Msg(DEPLOYMENT_SPEC)),
    F(3, "status", One, Msg(DEPLOYMENT_STATUS)),
];
/// A workload's status: counts, a revision or two, conditions; its own numbers per kind.
const REPLICA_SET_STATUS: &[F] = &[
    F(1, "replicas", One, Int),
    F(2, "fullyLabeledReplicas", One, Int),
    F(3, "observedGeneration", One, Int),
    F(4, "readyReplicas", One, Int),
    F(5, "availableReplicas", One, Int),
    F(6, "conditions", Many, Msg(WORKLOAD_CONDITION)),
    F(7, "terminatingReplicas", One, PInt),
];
const WORKLOAD_CONDITION: &[F] = &[
    F(1, "type", One, Str),
    F(2, "status", One, Str),
    F(3, "lastTransitionTime", One, Time),
    F(4, "reason", One, Str),
    F(5, "message", One, Str),
];
const REPLICA_SET: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "replicas", One, PInt),
            F(2, "selector", One, Msg(LABEL_SELECTOR)),
            F(3, "template", One, Msg(POD_TEMPLATE_SPEC)),
            F(4, "minReadySeconds", One, Int),
        ]),
    ),
    F(3, "status", One, Msg(REPLICA_SET_STATUS)),
];
const STATEFUL_SET: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "replicas", One, PInt),
            F(2, "selector", One, Msg(LABEL_SELECTOR)),
            F(3, "template", One, Msg(POD_TEMPLATE_SPEC)),
            F(5, "serviceName", One, Str),
            F(6, "podManagementPolicy", One, Str),
            F(
                7,
                "updateStrategy",
                One,
                Msg(&[
                    F(1, "type", One, Str),
                    F(2, "rollingUpdate", One, Msg(&[F(1, "partition", One, PInt), F(2, "maxUnavailable", One, PIOS)])),
                ]),
            ),
            F(8, "revisionHistoryLimit", One, PInt),
            F(9, "minReadySeconds", One, Int),
        ]),
    ),
    F(
        3,
        "status",
        One,
        Msg(&[
            F(1, "observedGeneration", One, Int),
            F(2, "replicas", One, Int),
            F(3, "readyReplicas", One, Int),
            F(4, "currentReplicas", One, Int),
            F(5, "updatedReplicas", One, Int),
            F(6, "currentRevision", One, Str),
            F(7, "updateRevision", One, Str),
            F(9, "collisionCount", One, PInt),
            F(10, "conditions", Many, Msg(WORKLOAD_CONDITION)),
            F(11, "availableReplicas", One, Int),
        ]),
    ),
];
const DAEMON_SET: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "selector", One, Msg(LABEL_SELECTOR)),
            F(2, "template", One, Msg(POD_TEMPLATE_SPEC)),
            F(
                3,
                "updateStrategy",
                One,
                Msg(&[
                    F(1, "type", One, Str),
                    F(2, "rollingUpdate", One, Msg(&[F(1, "maxUnavailable", One, PIOS), F(2, "maxSurge", One, PIOS)])),
                ]),
            ),
            F(4, "minReadySeconds", One, Int),
            F(6, "revisionHistoryLimit", One, PInt),
        ]),
    ),
    F(
        3,
        "status",
        One,
        Msg(&[
            F(1, "currentNumberScheduled", One, Int),
            F(2, "numberMisscheduled", One, Int),
            F(3, "desiredNumberScheduled", One, Int),
            F(4, "numberReady", One, Int),
            F(5, "observedGeneration", One, Int),
            F(6, "updatedNumberScheduled", One, Int),
            F(7, "numberAvailable", One, Int),
            F(8, "numberUnavailable", One, Int),
            F(9, "collisionCount", One, PInt),
            F(10, "conditions", Many, Msg(WORKLOAD_CONDITION)),
        ]),
    ),
];
const LEASE: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "holderIdentity", One, Str),
            F(2, "leaseDurationSeconds", One, PInt),
            F(3, "acquireTime", One, MicroTime),
            F(4, "renewTime", One, MicroTime),
            F(5, "leaseTransitions", One, PInt),
            F(6, "strategy", One, Str),
            F(7, "preferredHolder", One, Str),
        ]),
    ),
];
const EVENT: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "involvedObject", One, Msg(OBJECT_REFERENCE)),
    F(3, "reason", One, Str),
    F(4, "message", One, Str),
    F(5, "source", One, Msg(&[F(1, "component", One, Str), F(2, "host", One, Str)])),
    F(6, "firstTimestamp", One, Time),
    F(7, "lastTimestamp", One, Time),
    F(8, "count", One, Int),
    F(9, "type", One, Str),
    F(10, "eventTime", One, MicroTime),
    F(11, "series", One, Msg(&[F(1, "count", One, Int), F(2, "lastObservedTime", One, MicroTime)])),
    F(12, "action", One, Str),
    F(13, "related", One, Msg(OBJECT_REFERENCE)),
    F(14, "reportingComponent", One, Str),
    F(15, "reportingInstance", One, Str),
];
const ENDPOINT_ADDRESS: &[F] = &[
    F(1, "ip", One, Str),
    F(2, "targetRef", One, Msg(OBJECT_REFERENCE)),
    F(3, "hostname", One, Str),
    F(4, "nodeName", One, Str),
];
const ENDPOINTS: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "subsets",
        Many,
        Msg(&[
            F(1, "addresses", Many, Msg(ENDPOINT_ADDRESS)),
            F(2, "notReadyAddresses", Many, Msg(ENDPOINT_ADDRESS)),
            F(
                3,
                "ports",
                Many,
                Msg(&[
                    F(1, "name", One, Str),
                    F(2, "port", One, Int),
                    F(3, "protocol", One, Str),
                    F(4, "appProtocol", One, Str),
                ]),
            ),
        ]),
    ),
];
// Go always writes `value` (an int32, not a pointer): 0 is a value given, as JSON has it.
const PRIORITY_CLASS: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "value", One, PInt),
    F(3, "globalDefault", One, Bool),
    F(4, "description", One, Str),
    F(5, "preemptionPolicy", One, Str),
];
const JOB_SPEC: &[F] = &[
    F(1, "parallelism", One, PInt),
    F(2, "completions", One, PInt),
    F(3, "activeDeadlineSeconds", One, PInt),
    F(4, "selector", One, Msg(LABEL_SELECTOR)),
    F(5, "manualSelector", One, PBool),
    F(6, "template", One, Msg(POD_TEMPLATE_SPEC)),
    F(7, "backoffLimit", One, PInt),
    F(8, "ttlSecondsAfterFinished", One, PInt),
    F(9, "completionMode", One, Str),
    F(10, "suspend", One, PBool),
    F(12, "backoffLimitPerIndex", One, PInt),
    F(13, "maxFailedIndexes", One, PInt),
    F(14, "podReplacementPolicy", One, Str),
    F(15, "managedBy", One, Str),
];
/// A status a client creating an object sends empty (Go writes value structs always).
const EMPTY: &[F] = &[];
const JOB: &[F] =
    &[F(1, "metadata", One, Msg(OBJECT_META)), F(2, "spec", One, Msg(JOB_SPEC)), F(3, "status", One, Msg(EMPTY))];
const CRON_JOB: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "schedule", One, Str),
            F(2, "startingDeadlineSeconds", One, PInt),
            F(3, "concurrencyPolicy", One, Str),
            F(4, "suspend", One, PBool),
            F(5, "jobTemplate", One, Msg(&[F(1, "metadata", One, Msg(OBJECT_META)), F(2, "spec", One, Msg(JOB_SPEC))])),
            F(6, "successfulJobsHistoryLimit", One, PInt),
            F(7, "failedJobsHistoryLimit", One, PInt),
            F(8, "timeZone", One, Str),
        ]),
    ),
    F(3, "status", One, Msg(EMPTY)),
];
const POD_DISRUPTION_BUDGET: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "minAvailable", One, PIOS),
            F(2, "selector", One, Msg(LABEL_SELECTOR)),
            F(3, "maxUnavailable", One, PIOS),
            F(4, "unhealthyPodEvictionPolicy", One, Str),
        ]),
    ),
    F(3, "status", One, Msg(EMPTY)),
];
const EVICTION: &[F] = &[F(1, "metadata", One, Msg(OBJECT_META)), F(2, "deleteOptions", One, Msg(DELETE_OPTIONS))];
const DELETE_OPTIONS: &[F] = &[
    F(1, "gracePeriodSeconds", One, PInt),
    F(2, "preconditions", One, Msg(&[F(1, "uid", One, Str), F(2, "resourceVersion", One, Str)])),
    F(3, "orphanDependents", One, PBool),
    F(4, "propagationPolicy", One, Str),
    F(5, "dryRun", Many, Str),
];

const TOKEN_REQUEST: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(1, "audiences", Many, Str),
            F(
                3,
                "boundObjectRef",
                One,
                Msg(&[
                    F(1, "kind", One, Str),
                    F(2, "apiVersion", One, Str),
                    F(3, "name", One, Str),
                    F(4, "uid", One, Str),
                ]),
            ),
            F(4, "expirationSeconds", One, PInt),
        ]),
    ),
    F(3, "status", One, Msg(&[F(1, "token", One, Str), F(2, "expirationTimestamp", One, Time)])),
];

const POLICY_RULE: &[F] = &[
    F(1, "verbs", Many, Str),
    F(2, "apiGroups", Many, Str),
    F(3, "resources", Many, Str),
    F(4, "resourceNames", Many, Str),
    F(5, "nonResourceURLs", Many, Str),
];
const ROLE: &[F] = &[F(1, "metadata", One, Msg(OBJECT_META)), F(2, "rules", Many, Msg(POLICY_RULE))];
const CLUSTER_ROLE: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "rules", Many, Msg(POLICY_RULE)),
    F(3, "aggregationRule", One, Msg(&[F(1, "clusterRoleSelectors", Many, Msg(LABEL_SELECTOR))])),
];
const ROLE_BINDING: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "subjects",
        Many,
        Msg(&[F(1, "kind", One, Str), F(2, "apiGroup", One, Str), F(3, "name", One, Str), F(4, "namespace", One, Str)]),
    ),
    F(3, "roleRef", One, Msg(&[F(1, "apiGroup", One, Str), F(2, "kind", One, Str), F(3, "name", One, Str)])),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(
        2,
        "spec",
        One,
        Msg(&[
            F(
                1,
                "resourceAttributes",
                One,
                Msg(&[
                    F(1, "namespace", One, Str),
                    F(2, "verb", One, Str),
                    F(3, "group", One, Str),
                    F(4, "version", One, Str),
                    F(5, "resource", One, Str),
                    F(6, "subresource", One, Str),
                    F(7, "name", One, Str),
                ]),
            ),
            F(2, "nonResourceAttributes", One, Msg(&[F(1, "path", One, Str), F(2, "verb", One, Str)])),
        ]),
    ),
    F(3, "status", One, Msg(EMPTY)),
];

const SELF_SUBJECT_RULES_REVIEW: &[F] = &[
    F(1, "metadata", One, Msg(OBJECT_META)),
    F(2, "spec", One, Msg(&[F(1, "namespace", One, Str)])),
    F(3, "status", One, Msg(EMPTY)),
];

/// The kinds read from protocol buffers, by apiVersion and kind.
fn schema_of(api_version: &str, kind: &str) -> Option<&'static [F]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Service") => SERVICE,
        ("v1", "Pod") => POD,
        ("v1", "Binding") => BINDING,
        ("v1", "Event") => EVENT,
        ("v1", "Endpoints") => ENDPOINTS,
        ("coordination.k8s.io/v1", "Lease") => LEASE,
        ("scheduling.k8s.io/v1", "PriorityClass") => PRIORITY_CLASS,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("apps/v1", "ReplicaSet") => REPLICA_SET,
        ("apps/v1", "StatefulSet") => STATEFUL_SET,
        ("apps/v1", "DaemonSet") => DAEMON_SET,
        ("batch/v1", "Job") => JOB,
        ("batch/v1", "CronJob") => CRON_JOB,
        ("policy/v1", "PodDisruptionBudget") => POD_DISRUPTION_BUDGET,
        ("policy/v1", "Eviction") => EVICTION,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => SELF_SUBJECT_RULES_REVIEW,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        // Registered in every group-version.
        (_, "DeleteOptions") => DELETE_OPTIONS,
        _ => return None,
    })
}

const TYPE_META: &[F] = &[F(1, "apiVersion", One, Str), F(2, "kind", One, Str)];

/// Why a body could not be read: a malformed one, or a kind or field not read from protobuf.
#[derive(Debug, PartialEq)]
pub enum Refused {
    Malformed(String),
    Unsupported(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Malformed(m) | Refused::Unsupported(m) => f.write_str(m),
        }
    }
}

/// The JSON object a protocol-buffer request body stands for.
pub fn to_json(body: &[u8]) -> Result<Value, Refused> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Refused::Malformed("the body does not start with the protobuf magic \"k8s\\0\"".into()))?;
    // runtime.Unknown: 1 the type meta, 2 the object's own encoding, 3 a content encoding.
    let encoding = bytes_field(envelope, 3, "envelope")?.unwrap_or_default();
    if !encoding.is_empty() {
        return Err(Refused::Unsupported(format!("content encoding {:?}", String::from_utf8_lossy(encoding))));
    }
    let type_meta = decode(bytes_field(envelope, 1, "envelope")?.unwrap_or_default(), TYPE_META, "typeMeta", 0)?;
    let text = |field: &str| type_meta.get(field).and_then(Value::as_str).unwrap_or("").to_string();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let schema = schema_of(&api_version, &kind).ok_or_else(|| {
        Refused::Unsupported(format!(
            "{kind} ({api_version}) is not read from protobuf here; send it as application/json"
        ))
    })?;
    let raw = bytes_field(envelope, 2, "envelope")?.unwrap_or_default();
    let mut object = match decode(raw, schema, &kind, 0)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

/// One wire value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(&'a [u8]),
}

impl Wire<'_> {
    fn is_zero(&self) -> bool {
        match self {
            Wire::Varint(v) => *v == 0,
            Wire::Bytes(b) => b.is_empty(),
            Wire::Fixed(b) => b.iter().all(|x| *x == 0),
        }
    }
}

fn malformed(path: &str, what: &str) -> Refused {
    Refused::Malformed(format!("{path}: {what}"))
}

fn varint(buf: &[u8], at: &mut usize, path: &str) -> Result<u64, Refused> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at).ok_or_else(|| malformed(path, "truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed(path, "varint longer than 10 bytes"))
}

fn take<'a>(buf: &'a [u8], at: &mut usize, len: usize, path: &str) -> Result<&'a [u8], Refused> {
    let end = at.checked_add(len).filter(|e| *e <= buf.len()).ok_or_else(|| malformed(path, "truncated field"))?;
    let bytes = &buf[*at..end];
    *at = end;
    Ok(bytes)
}

/// The next field of a message at `at`: its number and value.
fn next_field<'a>(buf: &'a [u8], at: &mut usize, path: &str) -> Result<(u64, Wire<'a>), Refused> {
    let key = varint(buf, at, path)?;
    let (number, wire_type) = (key >> 3, key & 7);
    let wire = match wire_type {
        0 => Wire::Varint(varint(buf, at, path)?),
        1 => Wire::Fixed(take(buf, at, 8, path)?),
        2 => {
            let len = usize::try_from(varint(buf, at, path)?).map_err(|_| malformed(path, "length"))?;
            Wire::Bytes(take(buf, at, len, path)?)
        }
        5 => Wire::Fixed(take(buf, at, 4, path)?),
        other => return Err(malformed(path, &format!("wire type {other} of field {number}"))),
    };
    Ok((number, wire))
}

/// The bytes of length-delimited field `number` of a message (the last one, as protobuf reads
/// a repeated singular field).
fn bytes_field<'a>(buf: &'a [u8], number: u64, path: &str) -> Result<Option<&'a [u8]>, Refused> {
    let (mut at, mut found) = (0, None);
    while at < buf.len() {
        match next_field(buf, &mut at, path)? {
            (n, Wire::Bytes(b)) if n == number => found = Some(b),
            (n, _) if n == number => return Err(malformed(path, &format!("field {n} is not length-delimited"))),
            _ => {}
        }
    }
    Ok(found)
}

/// Decodes one message by its table into a JSON object.
fn decode(buf: &[u8], schema: &[F], path: &str, depth: usize) -> Result<Value, Refused> {
    if depth > DEPTH_MAX {
        return Err(malformed(path, "nested too deeply"));
    }
    let mut object = Map::new();
    let mut at = 0;
    while at < buf.len() {
        let (number, wire) = next_field(buf, &mut at, path)?;
        let Some(&F(_, name, card, ty)) = schema.iter().find(|f| u64::from(f.0) == number) else {
            if wire.is_zero() {
                continue;
            }
            return Err(Refused::Unsupported(format!(
                "{path}: field {number} is set but not read from protobuf here; send this object as application/json"
            )));
        };
        let here = format!("{path}.{name}");
        match card {
            Card::One => match (ty, value(&wire, ty, &here, depth)?) {
                (Ty::Inline(_), Some(Value::Object(fields))) => object.extend(fields),
                (_, Some(Value::String(s))) if s.is_empty() => {}
                (_, Some(v)) => {
                    object.insert(name.into(), v);
                }
                (_, None) => {}
            },
            Card::Many => {
                let v = value(&wire, ty, &here, depth)?.unwrap_or(Value::Null);
                match object.entry(name).or_insert_with(|| json!([])) {
                    Value::Array(items) => items.push(v),
                    _ => unreachable!("a repeated field holds an array"),
                }
            }
            Card::Map => {
                let Wire::Bytes(entry) = wire else { return Err(malformed(&here, "a map entry is not a message")) };
                let entry_schema = [F(1, "key", One, Str), F(2, "value", One, ty)];
                let mut fields = match decode(entry, &entry_schema, &here, depth + 1)? {
                    Value::Object(fields) => fields,
                    _ => Map::new(),
                };
                let key = fields.remove("key").and_then(|k| k.as_str().map(String::from)).unwrap_or_default();
                // A map value is kept even when empty ("" is a value, not an absence).
                let value = fields.remove("value").unwrap_or_else(|| match ty {
                    Ty::Str | Ty::Bytes => json!(""),
                    _ => Value::Null,
                });
                match object.entry(name).or_insert_with(|| json!({})) {
                    Value::Object(map) => {
                        map.insert(key, value);
                    }
                    _ => unreachable!("a map field holds an object"),
                }
            }
        }
    }
    Ok(Value::Object(object))
}

/// A value as JSON writes it; None for what JSON leaves out (a zero time, an empty IntOrString).
fn value(wire: &Wire, ty: Ty, path: &str, depth: usize) -> Result<Option<Value>, Refused> {
    let bytes = || match wire {
        Wire::Bytes(b) => Ok(*b),
        _ => Err(malformed(path, "expected a length-delimited value")),
    };
    let int = || match wire {
        Wire::Varint(v) => Ok(*v as i64),
        _ => Err(malformed(path, "expected a varint")),
    };
    let text = || std::str::from_utf8(bytes()?).map_err(|_| malformed(path, "not UTF-8"));
    Ok(match ty {
        Ty::Str => Some(json!(text()?)),
        Ty::Bytes => Some(json!(base64::engine::general_purpose::STANDARD.encode(bytes()?))),
        Ty::Bool => Some(int()? != 0).filter(|b| *b).map(|b| json!(b)),
        Ty::Int => Some(int()?).filter(|i| *i != 0).map(|i| json!(i)),
        Ty::PBool => Some(json!(int()? != 0)),
        Ty::PInt => Some(json!(int()?)),
        Ty::Msg(schema) | Ty::Inline(schema) => Some(decode(bytes()?, schema, path, depth + 1)?),
        Ty::IntOrString | Ty::PIntOrString => {
            let schema = [F(1, "type", One, PInt), F(2, "intVal", One, PInt), F(3, "strVal", One, Str)];
            let v = decode(bytes()?, &schema, path, depth + 1)?;
            let int = v["intVal"].as_i64().unwrap_or(0);
            match v["type"].as_i64().unwrap_or(0) {
                1 => v.get("strVal").cloned().or(Some(json!(""))).filter(|s| s != "" || matches!(ty, Ty::PIntOrString)),
                0 if int == 0 && matches!(ty, Ty::IntOrString) => None,
                0 => Some(json!(int)),
                other => return Err(malformed(path, &format!("IntOrString of type {other}"))),
            }
        }
        Ty::Time | Ty::MicroTime => {
            let v = decode(bytes()?, &[F(1, "seconds", One, Int), F(2, "nanos", One, Int)], path, depth + 1)?;
            let (seconds, nanos) = (v["seconds"].as_i64().unwrap_or(0), v["nanos"].as_i64().unwrap_or(0));
            if seconds == 0 && nanos == 0 {
                None
            } else {
                let at = chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0))
                    .ok_or_else(|| malformed(path, "time out of range"))?;
                let micro = matches!(ty, Ty::MicroTime);
                let precision = if micro { chrono::SecondsFormat::Micros } else { chrono::SecondsFormat::Secs };
                Some(json!(at.to_rfc3339_opts(precision, true)))
            }
        }
        Ty::Quantity => decode(bytes()?, &[F(1, "string", One, Str)], path, depth + 1)?.get("string").cloned(),
        Ty::Raw => match bytes_field(bytes()?, 1, path)? {
            Some(raw) if !raw.is_empty() => {
                Some(serde_json::from_slice(raw).map_err(|e| malformed(path, &format!("raw JSON: {e}")))?)
            }
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    //! Bodies encoded by the Kubernetes protocol-buffer types of the k8s-pb crate (generated
    //! from Kubernetes' own definitions), so the tables' field numbers are checked against them.

    use super::*;
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity as PbQuantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString as PbIntOrString;
    use prost_k8s::Message as _;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    /// Metadata as Go writes it: every non-pointer field, empty ones included.
    fn meta(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            self_link: Some(String::new()),
            uid: Some(String::new()),
            resource_version: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(meta::Time { seconds: Some(0), nanos: Some(0) }),
            labels: [("app".to_string(), name.to_string())].into(),
            ..Default::default()
        }
    }

    fn int_or_string(v: Result<i32, &str>) -> PbIntOrString {
        match v {
            Ok(i) => PbIntOrString { r#type: Some(0), int_val: Some(i), str_val: Some(String::new()) },
            Err(s) => PbIntOrString { r#type: Some(1), int_val: Some(0), str_val: Some(s.into()) },
        }
    }

    #[test]
    fn a_deployment_as_kubectl_create_sends_it_reads_as_its_json() {
        let container = core::Container {
            name: Some("nginx".into()),
            image: Some("nginx:1.14.2".into()),
            working_dir: Some(String::new()),
            ports: vec![core::ContainerPort { container_port: Some(80), host_port: Some(0), ..Default::default() }],
            env: vec![core::EnvVar {
                name: Some("FROM".into()),
                value_from: Some(core::EnvVarSource {
                    config_map_key_ref: Some(core::ConfigMapKeySelector {
                        local_object_reference: Some(core::LocalObjectReference { name: Some("cfg".into()) }),
                        key: Some("k".into()),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            resources: Some(core::ResourceRequirements {
                limits: [("cpu".to_string(), PbQuantity { string: Some("500m".into()) })].into(),
                ..Default::default()
            }),
            stdin: Some(false),
            ..Default::default()
        };
        let deployment = apps::Deployment {
            metadata: Some(meta("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta("")),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        restart_policy: Some(String::new()),
                        host_network: Some(false),
                        termination_grace_period_seconds: Some(30),
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(int_or_string(Ok(0))),
                        max_surge: Some(int_or_string(Err("25%"))),
                    }),
                }),
                min_ready_seconds: Some(0),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus { replicas: Some(0), ..Default::default() }),
        };
        let body = envelope("apps/v1", "Deployment", deployment.encode_to_vec());
        assert_eq!(
            to_json(&body).unwrap(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": ""}},
                        "spec": {
                            "containers": [{
                                "name": "nginx", "image": "nginx:1.14.2",
                                "ports": [{"containerPort": 80}],
                                "env": [{"name": "FROM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}],
                                "resources": {"limits": {"cpu": "500m"}}
                            }],
                            "terminationGracePeriodSeconds": 30
                        }
                    },
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}
                },
                "status": {}
            })
        );
    }

    #[test]
    fn services_secrets_configmaps_namespaces_and_service_accounts_read_as_their_json() {
        let service = core::Service {
            metadata: Some(meta("web")),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(int_or_string(Ok(8080))),
                    node_port: Some(0),
                    ..Default::default()
                }],
                selector: [("app".to_string(), "web".to_string())].into(),
                cluster_ip: Some(String::new()),
                r#type: Some("NodePort".into()),
                external_ips: vec!["192.0.2.1".into()],
                ..Default::default()
            }),
            status: Some(core::ServiceStatus::default()),
        };
        let got = to_json(&envelope("v1", "Service", service.encode_to_vec())).unwrap();
        assert_eq!(
            got["spec"],
            json!({"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                "selector": {"app": "web"}, "type": "NodePort", "externalIPs": ["192.0.2.1"]})
        );
        let secret = core::Secret {
            metadata: Some(meta("s")),
            data: [("p".to_string(), b"x".to_vec()), ("empty".to_string(), Vec::new())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let got = to_json(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!((&got["data"], &got["type"]), (&json!({"p": "eA==", "empty": ""}), &json!("Opaque")));
        let config_map = core::ConfigMap {
            metadata: Some(meta("c")),
            data: [("greeting".to_string(), "hello".to_string())].into(),
            ..Default::default()
        };
        let got = to_json(&envelope("v1", "ConfigMap", config_map.encode_to_vec())).unwrap();
        assert_eq!(got["data"], json!({"greeting": "hello"}));
        let namespace = core::Namespace {
            metadata: Some(meta("team")),
            spec: Some(core::NamespaceSpec { finalizers: vec!["kubernetes".into()] }),
            status: Some(core::NamespaceStatus { phase: Some(String::new()), conditions: vec![] }),
        };
        let got = to_json(&envelope("v1", "Namespace", namespace.encode_to_vec())).unwrap();
        assert_eq!((&got["spec"], &got["status"]), (&json!({"finalizers": ["kubernetes"]}), &json!({})));
        let account = core::ServiceAccount {
            metadata: Some(meta("robot")),
            automount_service_account_token: Some(false),
            image_pull_secrets: vec![core::LocalObjectReference { name: Some("registry".into()) }],
            ..Default::default()
        };
        let got = to_json(&envelope("v1", "ServiceAccount", account.encode_to_vec())).unwrap();
        assert_eq!(got["automountServiceAccountToken"], false);
        assert_eq!(got["imagePullSecrets"], json!([{"name": "registry"}]));
    }

    #[test]
    fn a_stateful_set_with_volumes_and_probes_reads_as_its_json() {
        let probe = core::Probe {
            handler: Some(core::ProbeHandler {
                http_get: Some(core::HttpGetAction {
                    path: Some("/healthz".into()),
                    port: Some(int_or_string(Err("http"))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(0),
            ..Default::default()
        };
        let volumes = vec![
            core::Volume {
                name: Some("config".into()),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference { name: Some("cfg".into()) }),
                        default_mode: Some(0o644),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            core::Volume {
                name: Some("scratch".into()),
                volume_source: Some(core::VolumeSource {
                    empty_dir: Some(core::EmptyDirVolumeSource {
                        medium: Some(String::new()),
                        size_limit: Some(PbQuantity { string: Some("1Gi".into()) }),
                    }),
                    ..Default::default()
                }),
            },
        ];
        let set = apps::StatefulSet {
            metadata: Some(meta("db")),
            spec: Some(apps::StatefulSetSpec {
                replicas: Some(3),
                service_name: Some("db".into()),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta("db")),
                    spec: Some(core::PodSpec {
                        volumes,
                        containers: vec![core::Container {
                            name: Some("db".into()),
                            image: Some("postgres:16".into()),
                            readiness_probe: Some(probe),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                update_strategy: Some(apps::StatefulSetUpdateStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateStatefulSetStrategy {
                        partition: Some(0),
                        max_unavailable: None,
                    }),
                }),
                ..Default::default()
            }),
            status: Some(apps::StatefulSetStatus { replicas: Some(0), ..Default::default() }),
        };
        let got = to_json(&envelope("apps/v1", "StatefulSet", set.encode_to_vec())).unwrap();
        assert_eq!(got["spec"]["replicas"], 3);
        assert_eq!(got["spec"]["updateStrategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
        let pod = &got["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"],
            json!([{"name": "config", "configMap": {"name": "cfg", "defaultMode": 420}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}])
        );
        assert_eq!(
            pod["containers"][0]["readinessProbe"],
            json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10})
        );
        assert_eq!(got["status"], json!({}));
    }

    #[test]
    fn jobs_cron_jobs_budgets_and_evictions_read_as_kubectl_sends_them() {
        use k8s_pb::api::batch::v1 as batch;
        use k8s_pb::api::policy::v1 as policy;
        let template = core::PodTemplateSpec {
            metadata: Some(meta::ObjectMeta::default()),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: Some("c".into()),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                restart_policy: Some("Never".into()),
                ..Default::default()
            }),
        };
        let job_spec = batch::JobSpec {
            template: Some(template),
            backoff_limit: Some(2),
            completions: Some(3),
            ..Default::default()
        };
        let job =
            batch::Job { metadata: Some(meta("pi")), spec: Some(job_spec.clone()), status: Some(Default::default()) };
        let got = to_json(&envelope("batch/v1", "Job", job.encode_to_vec())).unwrap();
        assert_eq!(got["spec"]["backoffLimit"], 2);
        assert_eq!(got["spec"]["completions"], 3);
        assert_eq!(got["spec"]["template"]["spec"]["restartPolicy"], "Never");
        let cron = batch::CronJob {
            metadata: Some(meta("tick")),
            spec: Some(batch::CronJobSpec {
                schedule: Some("*/5 * * * *".into()),
                time_zone: Some("Etc/UTC".into()),
                job_template: Some(batch::JobTemplateSpec {
                    metadata: Some(meta::ObjectMeta::default()),
                    spec: Some(job_spec),
                }),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let got = to_json(&envelope("batch/v1", "CronJob", cron.encode_to_vec())).unwrap();
        assert_eq!(
            (got["spec"]["schedule"].as_str(), got["spec"]["timeZone"].as_str()),
            (Some("*/5 * * * *"), Some("Etc/UTC"))
        );
        assert_eq!(got["spec"]["jobTemplate"]["spec"]["backoffLimit"], 2);
        let pdb = policy::PodDisruptionBudget {
            metadata: Some(meta("db")),
            spec: Some(policy::PodDisruptionBudgetSpec {
                min_available: Some(PbIntOrString { r#type: Some(1), int_val: None, str_val: Some("50%".into()) }),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "db".to_string())].into(),
                    match_expressions: vec![],
                }),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let got = to_json(&envelope("policy/v1", "PodDisruptionBudget", pdb.encode_to_vec())).unwrap();
        assert_eq!(got["spec"], json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "db"}}}));
        let eviction = policy::Eviction {
            metadata: Some(meta("web-1")),
            delete_options: Some(meta::DeleteOptions { grace_period_seconds: Some(5), ..Default::default() }),
        };
        let got = to_json(&envelope("policy/v1", "Eviction", eviction.encode_to_vec())).unwrap();
        assert_eq!(got["deleteOptions"]["gracePeriodSeconds"], 5);
    }

    #[test]
    fn leases_and_events_read_with_micro_times() {
        use k8s_pb::api::coordination::v1 as coordination;
        let renewed = meta::MicroTime { seconds: Some(1_700_000_000), nanos: Some(123_456_000) };
        let lease = coordination::Lease {
            metadata: Some(meta("leader")),
            spec: Some(coordination::LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(renewed),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        let got = to_json(&envelope("coordination.k8s.io/v1", "Lease", lease.encode_to_vec())).unwrap();
        assert_eq!(
            got["spec"],
            json!({"holderIdentity": "a", "leaseDurationSeconds": 15,
                "renewTime": "2023-11-14T22:13:20.123456Z", "leaseTransitions": 0})
        );
        let event = core::Event {
            metadata: Some(meta("web.1")),
            involved_object: Some(core::ObjectReference {
                kind: Some("Pod".into()),
                name: Some("web".into()),
                ..Default::default()
            }),
            reason: Some("Scheduled".into()),
            source: Some(core::EventSource { component: Some("scheduler".into()), host: Some(String::new()) }),
            count: Some(1),
            r#type: Some("Normal".into()),
            event_time: Some(meta::MicroTime { seconds: Some(0), nanos: Some(0) }),
            ..Default::default()
        };
        let got = to_json(&envelope("v1", "Event", event.encode_to_vec())).unwrap();
        assert_eq!(got["involvedObject"], json!({"kind": "Pod", "name": "web"}));
        assert_eq!(
            (&got["source"], &got["count"], &got["type"]),
            (&json!({"component": "scheduler"}), &json!(1), &json!("Normal"))
        );
        assert!(got.get("eventTime").is_none(), "a zero time is left out: {got}");
    }

    #[test]
    fn priority_classes_keep_a_zero_value() {
        use k8s_pb::api::scheduling::v1 as scheduling;
        let class = scheduling::PriorityClass {
            metadata: Some(meta("low")),
            value: Some(0),
            global_default: Some(false),
            description: Some(String::new()),
            preemption_policy: Some("Never".into()),
        };
        let got = to_json(&envelope("scheduling.k8s.io/v1", "PriorityClass", class.encode_to_vec())).unwrap();
        assert_eq!((&got["value"], &got["preemptionPolicy"]), (&json!(0), &json!("Never")));
        assert!(got.get("globalDefault").is_none() && got.get("description").is_none(), "{got}");
        let negative = scheduling::PriorityClass { value: Some(-5), ..class };
        let got = to_json(&envelope("scheduling.k8s.io/v1", "PriorityClass", negative.encode_to_vec())).unwrap();
        assert_eq!(got["value"], -5);
    }

    #[test]
    fn what_is_not_read_is_refused_not_dropped() {
        assert!(matches!(to_json(b"{\"kind\": \"Pod\"}"), Err(Refused::Malformed(_))));
        assert!(matches!(to_json(b"k8s\0\x0a\xff"), Err(Refused::Malformed(_))));
        let widget = envelope("example.com/v1", "Widget", Vec::new());
        assert!(matches!(to_json(&widget), Err(Refused::Unsupported(m)) if m.contains("Widget")));
        // A field outside the tables: skipped while it holds its zero value, refused once set.
        let mut pod = core::Pod {
            metadata: Some(meta("p")),
            spec: Some(core::PodSpec { subdomain: Some(String::new()), ..Default::default() }),
            ..Default::default()
        };
        pod.spec.as_mut().unwrap().dns_config = Some(core::PodDnsConfig::default());
        assert!(to_json(&envelope("v1", "Pod", pod.encode_to_vec())).is_ok());
        pod.spec.as_mut().unwrap().dns_config =
            Some(core::PodDnsConfig { nameservers: vec!["1.1.1.1".into()], ..Default::default() });
        match to_json(&envelope("v1", "Pod", pod.encode_to_vec())) {
            Err(Refused::Unsupported(m)) => assert!(m.contains("Pod.spec: field 26"), "{m}"),
            other => panic!("a set field outside the tables: {other:?}"),
        }
    }

    #[test]
    fn role_bindings_and_roles_read_as_their_json() {
        use k8s_pb::api::rbac::v1 as rbac;
        let binding = rbac::RoleBinding {
            metadata: Some(meta("jane-view")),
            subjects: vec![rbac::Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("jane".into()),
                namespace: Some(String::new()),
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("view".into()),
            }),
        };
        let got = to_json(&envelope("rbac.authorization.k8s.io/v1", "RoleBinding", binding.encode_to_vec())).unwrap();
        assert_eq!(got["subjects"], json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"}]));
        assert_eq!(
            got["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
        );
        let role = rbac::Role {
            metadata: Some(meta("r")),
            rules: vec![rbac::PolicyRule {
                verbs: vec!["get".into()],
                api_groups: vec![String::new()],
                resources: vec!["pods".into()],
                ..Default::default()
            }],
        };
        let got = to_json(&envelope("rbac.authorization.k8s.io/v1", "Role", role.encode_to_vec())).unwrap();
        assert_eq!(got["rules"], json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]));
    }
}
