//! Protobuf request bodies, as kubectl sends built-in kinds
//! (`application/vnd.kubernetes.protobuf`): `kubectl create namespace`,
//! `configmap`, `secret`, `serviceaccount`, `deployment` and `kubectl auth
//! can-i` do not fall back to JSON when refused.
//!
//! The body is the magic `k8s\0` and a `runtime.Unknown` (its type meta,
//! then the object's own bytes). The object is decoded by a table of the
//! messages those commands send, field numbers as in the Kubernetes
//! `generated.proto` files, into the JSON a client would have sent. A field
//! the table does not know is refused (415, naming the kind and the field):
//! nothing is silently dropped. Zero values of proto2 non-pointer fields
//! (an empty string, a zero time, an empty message) are left out, as Go's
//! `omitempty` leaves them out of JSON.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// How one field's value reads.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Msg(&'static Msg),
    /// `map<string, string>` (labels, annotations, data).
    MapStr,
    /// `map<string, bytes>` (a Secret's data).
    MapBytes,
    /// `map<string, Quantity>` (resource requests and limits).
    MapQuantity,
    /// `metav1.Time`: RFC 3339, or left out when zero.
    Time,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
}

struct Field {
    num: u64,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

struct Msg {
    name: &'static str,
    fields: &'static [Field],
}

const fn f(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: true,
    }
}

use Kind::*;

static OBJECT_META: Msg = Msg {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Str),
        f(2, "generateName", Str),
        f(3, "namespace", Str),
        f(4, "selfLink", Str),
        f(5, "uid", Str),
        f(6, "resourceVersion", Str),
        f(7, "generation", Int),
        f(8, "creationTimestamp", Time),
        f(9, "deletionTimestamp", Time),
        f(10, "deletionGracePeriodSeconds", Int),
        f(11, "labels", MapStr),
        f(12, "annotations", MapStr),
        r(14, "finalizers", Str),
    ],
};
static NAMESPACE_SPEC: Msg = Msg {
    name: "NamespaceSpec",
    fields: &[r(1, "finalizers", Str)],
};
static NAMESPACE_STATUS: Msg = Msg {
    name: "NamespaceStatus",
    fields: &[f(1, "phase", Str)],
};
static NAMESPACE: Msg = Msg {
    name: "Namespace",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&NAMESPACE_SPEC)),
        f(3, "status", Msg(&NAMESPACE_STATUS)),
    ],
};
static CONFIG_MAP: Msg = Msg {
    name: "ConfigMap",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "data", MapStr),
        f(3, "binaryData", MapBytes),
        f(4, "immutable", Bool),
    ],
};
static SECRET: Msg = Msg {
    name: "Secret",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "data", MapBytes),
        f(3, "type", Str),
        f(4, "stringData", MapStr),
        f(5, "immutable", Bool),
    ],
};
static OBJECT_REFERENCE: Msg = Msg {
    name: "ObjectReference",
    fields: &[
        f(1, "kind", Str),
        f(2, "namespace", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        f(6, "resourceVersion", Str),
        f(7, "fieldPath", Str),
    ],
};
static LOCAL_OBJECT_REFERENCE: Msg = Msg {
    name: "LocalObjectReference",
    fields: &[f(1, "name", Str)],
};
static SERVICE_ACCOUNT: Msg = Msg {
    name: "ServiceAccount",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        r(2, "secrets", Msg(&OBJECT_REFERENCE)),
        r(3, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        f(4, "automountServiceAccountToken", Bool),
    ],
};
static REQUIREMENT: Msg = Msg {
    name: "LabelSelectorRequirement",
    fields: &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)],
};
static LABEL_SELECTOR: Msg = Msg {
    name: "LabelSelector",
    fields: &[
        f(1, "matchLabels", MapStr),
        r(2, "matchExpressions", Msg(&REQUIREMENT)),
    ],
};
static CONTAINER_PORT: Msg = Msg {
    name: "ContainerPort",
    fields: &[
        f(1, "name", Str),
        f(2, "hostPort", Int),
        f(3, "containerPort", Int),
        f(4, "protocol", Str),
        f(5, "hostIP", Str),
    ],
};
static ENV_VAR: Msg = Msg {
    name: "EnvVar",
    fields: &[f(1, "name", Str), f(2, "value", Str)],
};
static RESOURCES: Msg = Msg {
    name: "ResourceRequirements",
    fields: &[f(1, "limits", MapQuantity), f(2, "requests", MapQuantity)],
};
static CONTAINER: Msg = Msg {
    name: "Container",
    fields: &[
        f(1, "name", Str),
        f(2, "image", Str),
        r(3, "command", Str),
        r(4, "args", Str),
        f(5, "workingDir", Str),
        r(6, "ports", Msg(&CONTAINER_PORT)),
        r(7, "env", Msg(&ENV_VAR)),
        f(8, "resources", Msg(&RESOURCES)),
        f(13, "terminationMessagePath", Str),
        f(14, "imagePullPolicy", Str),
        f(16, "stdin", Bool),
        f(17, "stdinOnce", Bool),
        f(18, "tty", Bool),
        f(20, "terminationMessagePolicy", Str),
    ],
};
static POD_SPEC: Msg = Msg {
    name: "PodSpec",
    fields: &[
        r(2, "containers", Msg(&CONTAINER)),
        f(3, "restartPolicy", Str),
        f(4, "terminationGracePeriodSeconds", Int),
        f(5, "activeDeadlineSeconds", Int),
        f(6, "dnsPolicy", Str),
        f(7, "nodeSelector", MapStr),
        f(8, "serviceAccountName", Str),
        f(9, "serviceAccount", Str),
        f(10, "nodeName", Str),
        f(11, "hostNetwork", Bool),
        f(12, "hostPID", Bool),
        f(13, "hostIPC", Bool),
        r(15, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        f(16, "hostname", Str),
        f(17, "subdomain", Str),
        f(19, "schedulerName", Str),
        f(21, "automountServiceAccountToken", Bool),
        f(24, "priorityClassName", Str),
    ],
};
static POD_TEMPLATE: Msg = Msg {
    name: "PodTemplateSpec",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&POD_SPEC)),
    ],
};
static ROLLING_UPDATE: Msg = Msg {
    name: "RollingUpdateDeployment",
    fields: &[
        f(1, "maxUnavailable", IntOrString),
        f(2, "maxSurge", IntOrString),
    ],
};
static STRATEGY: Msg = Msg {
    name: "DeploymentStrategy",
    fields: &[
        f(1, "type", Str),
        f(2, "rollingUpdate", Msg(&ROLLING_UPDATE)),
    ],
};
static DEPLOYMENT_SPEC: Msg = Msg {
    name: "DeploymentSpec",
    fields: &[
        f(1, "replicas", Int),
        f(2, "selector", Msg(&LABEL_SELECTOR)),
        f(3, "template", Msg(&POD_TEMPLATE)),
        f(4, "strategy", Msg(&STRATEGY)),
        f(5, "minReadySeconds", Int),
        f(6, "revisionHistoryLimit", Int),
        f(7, "paused", Bool),
        f(9, "progressDeadlineSeconds", Int),
    ],
};
static DEPLOYMENT_STATUS: Msg = Msg {
    name: "DeploymentStatus",
    fields: &[
        f(1, "observedGeneration", Int),
        f(2, "replicas", Int),
        f(3, "updatedReplicas", Int),
        f(4, "availableReplicas", Int),
        f(5, "unavailableReplicas", Int),
        f(7, "readyReplicas", Int),
        f(8, "collisionCount", Int),
        f(9, "terminatingReplicas", Int),
    ],
};
static DEPLOYMENT: Msg = Msg {
    name: "Deployment",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&DEPLOYMENT_SPEC)),
        f(3, "status", Msg(&DEPLOYMENT_STATUS)),
    ],
};
static RESOURCE_ATTRIBUTES: Msg = Msg {
    name: "ResourceAttributes",
    fields: &[
        f(1, "namespace", Str),
        f(2, "verb", Str),
        f(3, "group", Str),
        f(4, "version", Str),
        f(5, "resource", Str),
        f(6, "subresource", Str),
        f(7, "name", Str),
    ],
};
static NON_RESOURCE_ATTRIBUTES: Msg = Msg {
    name: "NonResourceAttributes",
    fields: &[f(1, "path", Str), f(2, "verb", Str)],
};
static SSAR_SPEC: Msg = Msg {
    name: "SelfSubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", Msg(&RESOURCE_ATTRIBUTES)),
        f(2, "nonResourceAttributes", Msg(&NON_RESOURCE_ATTRIBUTES)),
    ],
};
static SSAR_STATUS: Msg = Msg {
    name: "SubjectAccessReviewStatus",
    fields: &[
        f(1, "allowed", Bool),
        f(2, "reason", Str),
        f(3, "evaluationError", Str),
        f(4, "denied", Bool),
    ],
};
static SSAR: Msg = Msg {
    name: "SelfSubjectAccessReview",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&SSAR_SPEC)),
        f(3, "status", Msg(&SSAR_STATUS)),
    ],
};

/// The kinds decoded, by `apiVersion` and `kind`.
fn message_of(api_version: &str, kind: &str) -> Option<&'static Msg> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("v1", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => &SSAR,
        _ => return None,
    })
}

/// One field of the wire format: its number and its value.
enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i).ok_or("truncated varint")?;
        *i += 1;
        v |= u64::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

/// The fields of one message, in order.
fn fields(b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        let v = match tag & 7 {
            0 => Wire::Varint(varint(b, &mut i)?),
            2 => {
                let n = varint(b, &mut i)? as usize;
                let end = i
                    .checked_add(n)
                    .filter(|e| *e <= b.len())
                    .ok_or("truncated field")?;
                let s = &b[i..end];
                i = end;
                Wire::Len(s)
            }
            w => return Err(format!("wire type {w} is not used by these kinds")),
        };
        out.push((tag >> 3, v));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// A map entry: key (1) and value (2).
fn entry(b: &[u8]) -> Result<(String, Option<&[u8]>), String> {
    let mut key = String::new();
    let mut value = None;
    for (n, v) in fields(b)? {
        match (n, v) {
            (1, Wire::Len(k)) => key = text(k)?,
            (2, Wire::Len(x)) => value = Some(x),
            _ => return Err("a map entry has an unexpected field".into()),
        }
    }
    Ok((key, value))
}

fn decode(msg: &Msg, b: &[u8]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (num, wire) in fields(b)? {
        let field = msg
            .fields
            .iter()
            .find(|f| f.num == num)
            .ok_or_else(|| format!("field {num} of {} is not decoded here", msg.name))?;
        let value = match (field.kind, wire) {
            (Str, Wire::Len(s)) => Some(json!(text(s)?)).filter(|v| v != "" || field.repeated),
            (Int, Wire::Varint(v)) => Some(json!(v as i64)),
            (Bool, Wire::Varint(v)) => Some(json!(v != 0)),
            (Msg(m), Wire::Len(s)) => Some(Value::Object(decode(m, s)?)),
            (MapStr | MapBytes | MapQuantity, Wire::Len(s)) => {
                let (k, v) = entry(s)?;
                let v = v.unwrap_or_default();
                let v = match field.kind {
                    MapStr => json!(text(v)?),
                    MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(v)),
                    _ => quantity(v)?,
                };
                let map = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                map[k.as_str()] = v;
                continue;
            }
            (Time, Wire::Len(s)) => time(s)?,
            (IntOrString, Wire::Len(s)) => Some(int_or_string(s)?),
            _ => {
                return Err(format!(
                    "field {} of {} has the wrong wire type",
                    field.name, msg.name
                ));
            }
        };
        let Some(value) = value else { continue };
        if field.repeated {
            out.entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .expect("repeated fields are arrays")
                .push(value);
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(out)
}

/// `resource.Quantity`: its string (1).
fn quantity(b: &[u8]) -> Result<Value, String> {
    for (n, v) in fields(b)? {
        if let (1, Wire::Len(s)) = (n, v) {
            return Ok(json!(text(s)?));
        }
    }
    Ok(json!("0"))
}

/// `metav1.Time`: seconds (1) and nanos (2); the zero time is left out.
fn time(b: &[u8]) -> Result<Option<Value>, String> {
    let mut seconds: i64 = 0;
    for (n, v) in fields(b)? {
        if let (1, Wire::Varint(s)) = (n, v) {
            seconds = s as i64;
        }
    }
    // Go's zero time (year 1) and an empty message both mean "not set".
    if seconds <= -62_135_596_800 || b.is_empty() {
        return Ok(None);
    }
    Ok(chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string())))
}

/// `intstr.IntOrString`: type (1: 0 int, 1 string), intVal (2), strVal (3).
fn int_or_string(b: &[u8]) -> Result<Value, String> {
    let (mut kind, mut int, mut string) = (0, 0i64, String::new());
    for (n, v) in fields(b)? {
        match (n, v) {
            (1, Wire::Varint(t)) => kind = t,
            (2, Wire::Varint(i)) => int = i as i64,
            (3, Wire::Len(s)) => string = text(s)?,
            _ => return Err("IntOrString has an unexpected field".into()),
        }
    }
    Ok(if kind == 1 { json!(string) } else { json!(int) })
}

/// The JSON object a protobuf request body carries, or why it cannot be
/// read here.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let raw = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body does not start with the Kubernetes protobuf magic")?;
    let (mut api_version, mut kind, mut object) = (String::new(), String::new(), None);
    for (n, v) in fields(raw)? {
        match (n, v) {
            (1, Wire::Len(meta)) => {
                for (m, x) in fields(meta)? {
                    match (m, x) {
                        (1, Wire::Len(s)) => api_version = text(s)?,
                        (2, Wire::Len(s)) => kind = text(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(bytes)) => object = Some(bytes),
            (3 | 4, Wire::Len(s)) if !s.is_empty() => {
                return Err("an encoded or typed runtime.Unknown is not read here".into());
            }
            _ => {}
        }
    }
    let msg = message_of(&api_version, &kind)
        .ok_or_else(|| format!("{kind} ({api_version}) is not decoded from protobuf here"))?;
    let mut out = decode(msg, object.unwrap_or_default())?;
    let mut head = Map::new();
    head.insert("apiVersion".into(), json!(api_version));
    head.insert("kind".into(), json!(kind));
    head.append(&mut out);
    Ok(Value::Object(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `(field, bytes)` pairs as length-delimited fields.
    fn msg(parts: &[(u64, &[u8])]) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut out = Vec::new();
        for (n, b) in parts {
            varint(&mut out, (n << 3) | 2);
            varint(&mut out, b.len() as u64);
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn a_namespace_as_kubectl_sends_it_reads_as_json() {
        let meta = msg(&[(1, b"shop"), (2, b"")]);
        let labels = msg(&[(1, b"team"), (2, b"web")]);
        let meta = [meta, msg(&[(11, &labels)])].concat();
        let ns = msg(&[(1, &meta), (2, b""), (3, b"")]);
        let type_meta = msg(&[(1, b"v1"), (2, b"Namespace")]);
        let unknown = msg(&[(1, &type_meta), (2, &ns), (3, b""), (4, b"")]);
        let body = [b"k8s\0".as_slice(), &unknown].concat();
        assert_eq!(
            to_json(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shop", "labels": {"team": "web"}},
                "spec": {}, "status": {}})
        );
    }

    #[test]
    fn an_unknown_field_or_kind_is_refused_not_dropped() {
        let ns = msg(&[(42, b"x")]);
        let type_meta = msg(&[(1, b"v1"), (2, b"Namespace")]);
        let body = [b"k8s\0".as_slice(), &msg(&[(1, &type_meta), (2, &ns)])].concat();
        assert!(
            to_json(&body)
                .unwrap_err()
                .contains("field 42 of Namespace")
        );
        let type_meta = msg(&[(1, b"v1"), (2, b"Pod")]);
        let body = [b"k8s\0".as_slice(), &msg(&[(1, &type_meta), (2, b"")])].concat();
        assert!(to_json(&body).unwrap_err().contains("Pod (v1)"));
    }
}
