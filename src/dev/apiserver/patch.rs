//! The patch algorithms of the stand-in API server, as pure functions over
//! JSON: merge patch, JSON patch, strategic merge patch and server-side apply
//! with `managedFields`. They follow what kubectl and the kube crate see from
//! a real server closely enough for tests, with a built-in table of list merge
//! keys in place of the OpenAPI schema a real server consults.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value, json};

/// Why a patch was refused; each variant is one HTTP status of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchError {
    /// 400: the patch document itself is malformed.
    BadRequest(String),
    /// 422: a well-formed patch that does not apply to this object.
    Invalid(String),
    /// 409: a field-ownership conflict or a failed precondition.
    Conflict {
        message: String,
        fields: Vec<String>,
    },
    /// 415: the patch type does not fit the resource.
    UnsupportedMediaType(String),
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(m) | Self::Invalid(m) | Self::UnsupportedMediaType(m) => {
                f.write_str(m)
            }
            Self::Conflict { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for PatchError {}

fn bad(message: impl Into<String>) -> PatchError {
    PatchError::BadRequest(message.into())
}

/// RFC 7386 JSON merge patch (application/merge-patch+json).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// RFC 6902 JSON patch (application/json-patch+json): add, remove, replace,
/// move, copy, test; JSON pointers with ~0 ~1 escapes and "-" for append.
/// A failed `test` or a missing path is an error (the whole patch applies or none).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| bad("a JSON patch must be an array of operations"))?;
    let mut doc = target.clone();
    for op in ops {
        apply_op(&mut doc, op)?;
    }
    Ok(doc)
}

/// Malformed operations are the client's error (400, as evanphx/json-patch
/// decoding is on a real server); operations that do not fit the object
/// are 422, as a real server answers.
fn apply_op(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let text = |name: &str| {
        op.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("operation {op} has no \"{name}\" string")))
    };
    let kind = text("op")?;
    let path = pointer(text("path")?)?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| bad(format!("operation {op} has no \"value\"")))
    };
    match kind {
        "add" => add(doc, &path, value()?),
        "remove" => remove(doc, &path).map(drop),
        "replace" => {
            let value = value()?;
            let slot = get_mut(doc, &path).ok_or_else(|| missing("replace", &path))?;
            *slot = value;
            Ok(())
        }
        "move" => {
            let from = pointer(text("from")?)?;
            if path.len() > from.len() && path.starts_with(&from) {
                return Err(bad(format!(
                    "cannot move {} into its own child",
                    show(&from)
                )));
            }
            let moved = remove(doc, &from)?;
            add(doc, &path, moved)
        }
        "copy" => {
            let from = pointer(text("from")?)?;
            let copied = get(doc, &from)
                .ok_or_else(|| missing("copy", &from))?
                .clone();
            add(doc, &path, copied)
        }
        "test" => match get(doc, &path) {
            Some(found) if json_eq(found, &value()?) => Ok(()),
            _ => Err(PatchError::Invalid(format!(
                "testing value {} failed: test failed",
                show(&path)
            ))),
        },
        other => Err(bad(format!("Unexpected kind: {other}"))),
    }
}

fn pointer(text: &str) -> Result<Vec<String>, PatchError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| bad(format!("JSON pointer {text:?} does not start with /")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn show(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn missing(op: &str, path: &[String]) -> PatchError {
    PatchError::Invalid(format!(
        "{op} operation does not apply: doc is missing path: \"{}\": missing value",
        show(path)
    ))
}

/// An array index token: digits without leading zeros, or "-" (one past the
/// end) where `append` allows it.
fn index(token: &str, len: usize, append: bool) -> Option<usize> {
    if append && token == "-" {
        return Some(len);
    }
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    let i: usize = token.parse().ok()?;
    (i < len || (append && i == len)).then_some(i)
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => index(t, a.len(), false).map(|i| &a[i]),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get_mut(t),
        Value::Array(a) => {
            let len = a.len();
            index(t, len, false).map(move |i| &mut a[i])
        }
        _ => None,
    })
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), PatchError> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent) {
        Some(Value::Object(m)) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = index(last, a.len(), true).ok_or_else(|| missing("add", path))?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(missing("add", path)),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, PatchError> {
    let gone = || {
        PatchError::Invalid(format!(
            "unable to remove nonexistent key: {}: missing value",
            show(path)
        ))
    };
    let (last, parent) = path.split_last().ok_or_else(gone)?;
    match get_mut(doc, parent) {
        Some(Value::Object(m)) => m.remove(last).ok_or_else(gone),
        Some(Value::Array(a)) => index(last, a.len(), false)
            .map(|i| a.remove(i))
            .ok_or_else(gone),
        _ => Err(gone()),
    }
}

/// JSON equality where 1 and 1.0 are the same number, as in Go.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// How a list merges: the `patchStrategy`/`listType` of the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListType {
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

/// Kinds whose lists follow the built-in table below; anything else (custom
/// resources) has atomic lists, except the ObjectMeta ones every kind shares.
const BUILTIN_KINDS: &str = "Pod PodTemplate ReplicationController Deployment ReplicaSet \
    StatefulSet DaemonSet Job CronJob Service Endpoints ConfigMap Secret Namespace Node \
    ServiceAccount PersistentVolume PersistentVolumeClaim Event LimitRange \
    ResourceQuota Ingress IngressClass NetworkPolicy Role RoleBinding ClusterRole \
    ClusterRoleBinding StorageClass VolumeAttachment CustomResourceDefinition Lease \
    PodDisruptionBudget HorizontalPodAutoscaler EndpointSlice PriorityClass \
    APIService CSIDriver CSINode";

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// The merge protocol's defaulting: ports are keyed with their protocol and
/// a real server defaults it to TCP, so an item without it is a TCP item.
fn key_field(item: &Value, field: &str) -> Option<Value> {
    item.get(field)
        .cloned()
        .or_else(|| (field == "protocol").then(|| json!("TCP")))
}

fn item_key(item: &Value, keys: &[&str]) -> Option<Map<String, Value>> {
    item.as_object()?;
    keys.iter()
        .map(|k| key_field(item, k).map(|v| (k.to_string(), v)))
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Schema<'a> {
    kind: &'a str,
    builtin: bool,
}

impl<'a> Schema<'a> {
    fn new(kind: &'a str) -> Self {
        Self {
            kind,
            builtin: BUILTIN_KINDS.split_whitespace().any(|k| k == kind),
        }
    }

    /// Keyed on field names (list items add no name), so `names` is the
    /// chain of map keys from the object's root down to the list.
    fn list(self, names: &[String]) -> ListType {
        let field = names.last().map_or("", String::as_str);
        let parent = names.len().checked_sub(2).map_or("", |i| names[i].as_str());
        match (parent, field) {
            ("metadata", "finalizers") => return ListType::Set,
            ("metadata", "ownerReferences") => return ListType::Map(&["uid"]),
            _ if !self.builtin => return ListType::Atomic,
            _ => {}
        }
        match field {
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "env"
            | "volumes"
            | "imagePullSecrets"
            | "secrets" => ListType::Map(&["name"]),
            "volumeMounts" => ListType::Map(&["mountPath"]),
            "volumeDevices" => ListType::Map(&["devicePath"]),
            "conditions" => ListType::Map(&["type"]),
            "hostAliases" => ListType::Map(&["ip"]),
            "ports" if self.kind == "Service" && names == ["spec", "ports"] => {
                ListType::Map(&["port", "protocol"])
            }
            "ports" if CONTAINER_LISTS.contains(&parent) => {
                ListType::Map(&["containerPort", "protocol"])
            }
            _ => ListType::Atomic,
        }
    }
}

/// Kubernetes strategic merge patch (application/strategic-merge-patch+json)
/// for built-in kinds. `kind` is the object's kind (e.g. "Deployment").
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    kind: &str,
) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(bad("a strategic merge patch must be a JSON object"));
    }
    let merged = smp_value(
        Some(target.clone()),
        patch,
        Schema::new(kind),
        &mut Vec::new(),
    )?;
    Ok(merged.unwrap_or_else(|| json!({})))
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// Merges one patch value into the original; `None` means the field goes.
fn smp_value(
    orig: Option<Value>,
    patch: &Value,
    s: Schema,
    names: &mut Vec<String>,
) -> Result<Option<Value>, PatchError> {
    match patch {
        Value::Null => Ok(None),
        Value::Array(items) => smp_list(orig, items, s, names).map(Some),
        Value::Object(p) => {
            let mut base = match (directive(patch), orig) {
                (Some("delete"), _) => return Ok(None),
                (Some("replace"), _) => Map::new(),
                (None | Some("merge"), Some(Value::Object(m))) => m,
                (None | Some("merge"), _) => Map::new(),
                (Some(other), _) => return Err(bad(format!("Unknown patch type: {other}"))),
            };
            smp_map(&mut base, p, s, names)?;
            Ok(Some(Value::Object(base)))
        }
        other => Ok(Some(other.clone())),
    }
}

fn smp_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    s: Schema,
    names: &mut Vec<String>,
) -> Result<(), PatchError> {
    if let Some(keep) = patch.get("$retainKeys") {
        let keep = keep
            .as_array()
            .ok_or_else(|| bad("$retainKeys must be a list of field names"))?;
        orig.retain(|k, _| keep.iter().any(|r| r.as_str() == Some(k)));
    }
    for (key, value) in patch.iter().filter(|(k, _)| !k.starts_with('$')) {
        names.push(key.clone());
        let merged = smp_value(orig.get_mut(key).map(Value::take), value, s, names);
        names.pop();
        match merged? {
            Some(v) => orig.insert(key.clone(), v),
            None => orig.remove(key),
        };
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value
                .as_array()
                .ok_or_else(|| bad(format!("{key} must be a list")))?;
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = value
                .as_array()
                .ok_or_else(|| bad(format!("{key} must be a list")))?;
            names.push(field.to_string());
            let list_type = s.list(names);
            names.pop();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                reorder(list, order, list_type);
            }
        }
    }
    Ok(())
}

/// `$setElementOrder`: the items it names take its order among the slots they
/// hold; items only the server has keep their places, as on a real server.
fn reorder(list: &mut [Value], order: &[Value], list_type: ListType) {
    let rank = |v: &Value| {
        order.iter().position(|o| match list_type {
            ListType::Map(keys) => item_key(o, keys).is_some_and(|k| Some(k) == item_key(v, keys)),
            _ => o == v,
        })
    };
    let slots: Vec<usize> = (0..list.len())
        .filter(|&i| rank(&list[i]).is_some())
        .collect();
    let mut items: Vec<Value> = slots.iter().map(|&i| list[i].take()).collect();
    items.sort_by_key(|v| rank(v));
    for (slot, item) in slots.into_iter().zip(items) {
        list[slot] = item;
    }
}

fn smp_list(
    orig: Option<Value>,
    patch: &[Value],
    s: Schema,
    names: &mut Vec<String>,
) -> Result<Value, PatchError> {
    let orig = match orig {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let list_type = s.list(names);
    if list_type == ListType::Atomic || patch.iter().any(|p| directive(p) == Some("replace")) {
        let items = patch.iter().filter(|p| directive(p).is_none());
        return items
            .map(|p| clean(p, s, names))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    match list_type {
        ListType::Map(keys) => smp_keyed(orig, patch, keys, s, names).map(Value::Array),
        _ => {
            let mut merged = orig;
            for item in patch {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            Ok(Value::Array(merged))
        }
    }
}

/// A patch value standing alone: nulls and directives dropped.
fn clean(v: &Value, s: Schema, names: &mut Vec<String>) -> Result<Value, PatchError> {
    Ok(smp_value(None, v, s, names)?.unwrap_or(Value::Null))
}

fn smp_keyed(
    mut orig: Vec<Value>,
    patch: &[Value],
    keys: &[&str],
    s: Schema,
    names: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    for item in patch {
        let key = item_key(item, keys).ok_or_else(|| {
            bad(format!(
                "map: {item} does not contain declared merge key: {}",
                keys[0]
            ))
        })?;
        let pos = orig
            .iter()
            .position(|o| item_key(o, keys).as_ref() == Some(&key));
        match (directive(item), pos) {
            (Some("delete"), Some(i)) => {
                orig.remove(i);
            }
            (Some("delete"), None) => {}
            (None, Some(i)) => {
                let base = orig[i].take();
                orig[i] = smp_value(Some(base), item, s, names)?.unwrap_or(Value::Null);
            }
            (None, None) => orig.push(clean(item, s, names)?),
            (Some(other), _) => return Err(bad(format!("Unknown patch type in a list: {other}"))),
        }
    }
    Ok(orig)
}

/// A field path in FieldsV1 segments: "f:name", "k:{json}", "v:json", "i:n".
type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// Metadata nobody owns: identity and what the server maintains.
const UNOWNED_META: &str = "name namespace uid resourceVersion generation creationTimestamp \
    deletionTimestamp deletionGracePeriodSeconds managedFields selfLink";

/// The object without what field ownership ignores. `identity` keeps
/// apiVersion, kind, name and namespace (they are merged but not owned).
fn strip(obj: &Value, identity: bool, status: bool) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        if !identity {
            m.remove("apiVersion");
            m.remove("kind");
        }
        if !status {
            m.remove("status");
        }
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            meta.retain(|k, _| {
                (identity && (k == "name" || k == "namespace"))
                    || !UNOWNED_META.split_whitespace().any(|u| u == k)
            });
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    v
}

fn field_set(obj: &Value, s: Schema) -> FieldSet {
    let mut out = FieldSet::new();
    collect(obj, s, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

/// Struct-like maps are not members themselves (as in real FieldsV1, where
/// only schema maps are); list items are, and so are leaves.
fn collect(v: &Value, s: Schema, names: &mut Vec<String>, path: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() || path.is_empty() => {
            for (k, child) in m.iter().filter(|(_, c)| !c.is_null()) {
                names.push(k.clone());
                path.push(format!("f:{k}"));
                collect(child, s, names, path, out);
                names.pop();
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match item_segments(items, s.list(names)) {
            Some(segments) => {
                for (segment, item) in segments.into_iter().zip(items) {
                    path.push(segment);
                    out.insert(path.clone());
                    if item.is_object() {
                        collect(item, s, names, path, out);
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        Value::Array(_) => {}
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The FieldsV1 keys of a list's items, or `None` when the list is owned whole.
fn item_segments(items: &[Value], list_type: ListType) -> Option<Vec<String>> {
    match list_type {
        ListType::Atomic => None,
        ListType::Set => items
            .iter()
            .all(|v| !v.is_object() && !v.is_array())
            .then(|| items.iter().map(|v| format!("v:{v}")).collect()),
        ListType::Map(keys) => items
            .iter()
            .map(|v| item_key(v, keys).map(|k| format!("k:{}", Value::Object(k))))
            .collect(),
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[String]) {
        match path.split_first() {
            None => {
                node.insert(".".into(), json!({}));
            }
            Some((segment, rest)) => {
                if let Value::Object(child) =
                    node.entry(segment.clone()).or_insert_with(|| json!({}))
                {
                    insert(child, rest);
                }
            }
        }
    }
    fn drop_lone_dots(node: &mut Map<String, Value>) {
        if node.len() == 1 && node.contains_key(".") {
            node.clear();
        }
        for child in node.values_mut() {
            if let Value::Object(c) = child {
                drop_lone_dots(c);
            }
        }
    }
    let mut root = Map::new();
    for path in set {
        insert(&mut root, path);
    }
    drop_lone_dots(&mut root);
    Value::Object(root)
}

fn from_fields_v1(tree: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Value::Object(m) = v else { return };
        if !path.is_empty() && (m.is_empty() || m.contains_key(".")) {
            out.insert(path.clone());
        }
        for (k, child) in m.iter().filter(|(k, _)| *k != ".") {
            path.push(k.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

fn item_index(items: &[Value], segment: &str) -> Option<usize> {
    if let Some(k) = segment.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        items.iter().position(|it| {
            it.is_object()
                && key
                    .iter()
                    .all(|(f, want)| key_field(it, f).as_ref() == Some(want))
        })
    } else if let Some(v) = segment.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        items.iter().position(|it| *it == want)
    } else {
        segment
            .strip_prefix("i:")?
            .parse()
            .ok()
            .filter(|&i| i < items.len())
    }
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, segment| match v {
        Value::Object(m) => m.get(segment.strip_prefix("f:")?),
        Value::Array(a) => item_index(a, segment).map(|i| &a[i]),
        _ => None,
    })
}

fn lookup_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, segment| match v {
        Value::Object(m) => m.get_mut(segment.strip_prefix("f:")?),
        Value::Array(a) => item_index(a, segment).map(move |i| &mut a[i]),
        _ => None,
    })
}

fn remove_path(v: &mut Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match lookup_mut(v, parent) {
        Some(Value::Object(m)) => last
            .strip_prefix("f:")
            .is_some_and(|k| m.remove(k).is_some()),
        Some(Value::Array(a)) => item_index(a, last).map(|i| a.remove(i)).is_some(),
        _ => false,
    }
}

/// A path as the API server prints it in conflicts: `.spec.replicas`,
/// `.spec.containers[name="web"].image`, `.metadata.finalizers[="x"]`.
fn display_path(path: &[String]) -> String {
    let segment = |s: &String| {
        if let Some(f) = s.strip_prefix("f:") {
            format!(".{f}")
        } else if let Some(k) = s.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(f, v)| format!("{f}={v}")).collect();
            format!("[{}]", parts.join(","))
        } else if let Some(v) = s.strip_prefix("v:") {
            format!("[={v}]")
        } else {
            format!("[{}]", s.trim_start_matches("i:"))
        }
    };
    path.iter().map(segment).collect()
}

/// Whether nothing below `path` is in `set` (so its value is what is owned).
fn is_leaf(set: &FieldSet, path: &Path) -> bool {
    use std::ops::Bound::{Excluded, Unbounded};
    let after = set.range::<Path, _>((Excluded(path), Unbounded)).next();
    !after.is_some_and(|p| p.starts_with(path))
}

/// Whether an owned value changed. Maps are compared by their fields, each
/// owned on its own: a map that only gained or lost fields did not change.
fn differs(old: Option<&Value>, new: &Value) -> bool {
    old.is_none_or(|o| !(json_eq(o, new) || (o.is_object() && new.is_object())))
}

/// Whether `path` or something below it is in `set`.
fn holds(set: &FieldSet, path: &Path) -> bool {
    set.range(path.clone()..)
        .next()
        .is_some_and(|p| p.starts_with(path))
}

/// One `metadata.managedFields` entry; unknown keys (e.g. `subresource`) are kept.
struct Entry {
    raw: Map<String, Value>,
    set: FieldSet,
}

impl Entry {
    fn new(manager: &str, operation: &str, api_version: &str, now: &str, set: FieldSet) -> Self {
        let raw = json!({"manager": manager, "operation": operation,
                         "apiVersion": api_version, "time": now});
        Self {
            raw: raw.as_object().cloned().unwrap_or_default(),
            set,
        }
    }

    fn parse(v: &Value) -> Option<Self> {
        let raw = v.as_object()?.clone();
        let set = raw.get("fieldsV1").map(from_fields_v1).unwrap_or_default();
        Some(Self { raw, set })
    }

    fn text(&self, key: &str) -> &str {
        self.raw.get(key).and_then(Value::as_str).unwrap_or("")
    }

    fn is(&self, manager: &str, operation: &str) -> bool {
        self.text("manager") == manager && self.text("operation") == operation
    }

    /// As the API server names a manager in conflict messages.
    fn describe(&self) -> String {
        let mut name = format!("{:?}", self.text("manager"));
        if !self.text("subresource").is_empty() {
            name = format!("{name} with subresource {:?}", self.text("subresource"));
        }
        if self.text("operation") == "Update" {
            name = format!("{name} using {}", self.text("apiVersion"));
        }
        name
    }

    fn into_value(mut self) -> Value {
        self.raw.insert("fieldsType".into(), json!("FieldsV1"));
        self.raw.insert("fieldsV1".into(), to_fields_v1(&self.set));
        Value::Object(self.raw)
    }
}

fn entries_of(obj: &Value) -> Vec<Entry> {
    let list = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(Entry::parse)
        .collect()
}

/// Entries left with no fields are dropped, as a real server does.
fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(Entry::into_value)
        .collect();
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match root.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) if list.is_empty() => drop(meta.remove("managedFields")),
        Some(meta) => drop(meta.insert("managedFields".into(), Value::Array(list))),
        None if list.is_empty() => {}
        None => drop(root.insert("metadata".into(), json!({ "managedFields": list }))),
    }
}

/// Moves to the current operation what it changed, from every entry but
/// `skip`: a changed field another manager owns is a conflict unless forced
/// (updates always force); fields the change removed are nobody's anymore.
fn take_ownership(
    before: &Value,
    after: &Value,
    entries: &mut [Entry],
    skip: Option<usize>,
    force: bool,
) -> Result<(), PatchError> {
    let mut conflicts = Vec::new();
    let mut removed = Vec::new();
    for (i, entry) in entries.iter().enumerate().filter(|(i, _)| Some(*i) != skip) {
        for path in &entry.set {
            match (lookup(before, path), lookup(after, path)) {
                (Some(_), None) => removed.push((i, path.clone())),
                (old, Some(new)) if is_leaf(&entry.set, path) && differs(old, new) => {
                    conflicts.push((i, path.clone()));
                }
                _ => {}
            }
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(conflict_error(entries, &conflicts));
    }
    for (i, path) in conflicts.into_iter().chain(removed) {
        entries[i].set.remove(&path);
    }
    Ok(())
}

fn conflict_error(entries: &[Entry], conflicts: &[(usize, Path)]) -> PatchError {
    let fields: Vec<String> = conflicts.iter().map(|(_, p)| display_path(p)).collect();
    let message = match conflicts {
        [(i, path)] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            entries[*i].describe(),
            display_path(path)
        ),
        _ => {
            let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (i, path) in conflicts {
                by_manager
                    .entry(entries[*i].describe())
                    .or_default()
                    .push(display_path(path));
            }
            let parts: Vec<String> = by_manager
                .iter()
                .map(|(m, paths)| format!("conflicts with {m}:\n- {}", paths.join("\n- ")))
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                parts.join("\n")
            )
        }
    };
    PatchError::Conflict { message, fields }
}

/// The precondition failure of a real server, less its `Operation cannot be
/// fulfilled on <resource> "<name>": ` prefix (this module knows no resources).
const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

fn check_apply(live: Option<&Value>, applied: &Value) -> Result<(), PatchError> {
    if !applied.is_object() {
        return Err(bad("an apply configuration must be an object"));
    }
    for field in ["apiVersion", "kind"] {
        if applied
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(bad(format!(
                "Object '{field}' is missing in the apply configuration"
            )));
        }
    }
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|v| !v.is_null())
    {
        return Err(bad("metadata.managedFields must be nil"));
    }
    let wanted = applied
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let current = live
        .and_then(|l| l.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str);
    match (live, wanted) {
        (Some(_), Some(rv)) if !rv.is_empty() && Some(rv) != current => Err(PatchError::Conflict {
            message: MODIFIED.into(),
            fields: Vec::new(),
        }),
        _ => Ok(()),
    }
}

/// Merges an apply configuration into the live object: maps recursively,
/// keyed lists by key, sets as sets, other lists replaced; nulls are unset.
fn apply_merge(live: &mut Value, applied: &Value, s: Schema, names: &mut Vec<String>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a.iter().filter(|(_, v)| !v.is_null()) {
                names.push(k.clone());
                apply_merge(l.entry(k.clone()).or_insert(Value::Null), v, s, names);
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) if s.list(names) != ListType::Atomic => {
            apply_items(l, a, s, names)
        }
        (live, applied) => *live = without_nulls(applied),
    }
}

fn apply_items(live: &mut Vec<Value>, applied: &[Value], s: Schema, names: &mut Vec<String>) {
    match s.list(names) {
        ListType::Map(keys)
            if live
                .iter()
                .chain(applied)
                .all(|v| item_key(v, keys).is_some()) =>
        {
            for item in applied {
                let key = item_key(item, keys);
                match live.iter_mut().find(|l| item_key(l, keys) == key) {
                    Some(found) => apply_merge(found, item, s, names),
                    None => live.push(without_nulls(item)),
                }
            }
        }
        ListType::Set => {
            for item in applied {
                if !live.contains(item) {
                    live.push(item.clone());
                }
            }
        }
        _ => *live = applied.iter().map(without_nulls).collect(),
    }
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), without_nulls(v)))
            .collect(),
        Value::Array(a) => a.iter().map(without_nulls).collect(),
        other => other.clone(),
    }
}

/// Removes what the applier owned and no longer applies, unless someone
/// (the applier included) still owns it or something below it. Maps and
/// lists left empty by that go too, unless owned themselves.
fn prune(obj: &mut Value, previous: &FieldSet, keep: &FieldSet) {
    for path in previous.iter().filter(|p| !holds(keep, p)) {
        if !remove_path(obj, path) {
            continue;
        }
        for n in (1..path.len()).rev() {
            let parent = &path[..n];
            let empty = lookup(obj, parent).is_some_and(|v| {
                v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
            });
            if !empty || keep.contains(parent) {
                break;
            }
            remove_path(obj, parent);
        }
    }
}

/// Server-side apply (application/apply-patch+yaml, body already parsed to JSON).
/// `live`: the current object (None: it does not exist and is created).
/// `applied`: the applier's configuration (apiVersion, kind, metadata.name, ...).
/// Returns the new object including an updated `metadata.managedFields`.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, PatchError> {
    check_apply(live, applied)?;
    let text = |field: &str| {
        applied
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let s = Schema::new(text("kind"));
    let applied_set = field_set(&strip(applied, false, false), s);
    let before = live.cloned().unwrap_or_else(|| json!({}));
    let mut merged = before.clone();
    apply_merge(
        &mut merged,
        &strip(applied, true, false),
        s,
        &mut Vec::new(),
    );

    let mut entries = entries_of(&before);
    let mine = entries.iter().position(|e| e.is(manager, "Apply"));
    let previous = mine
        .map(|i| std::mem::take(&mut entries[i].set))
        .unwrap_or_default();
    let others = entries.iter().flat_map(|e| e.set.iter().cloned());
    let keep: FieldSet = others.chain(applied_set.iter().cloned()).collect();
    prune(&mut merged, &previous, &keep);
    take_ownership(&before, &merged, &mut entries, mine, force)?;

    // A no-op apply keeps its entry's time, so the object stays identical.
    let unchanged =
        previous == applied_set && strip(&before, true, true) == strip(&merged, true, true);
    let time = match mine {
        Some(i) if unchanged => entries[i].text("time").to_string(),
        _ => now.to_string(),
    };
    let entry = Entry::new(manager, "Apply", text("apiVersion"), &time, applied_set);
    match mine {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    store_entries(&mut merged, entries);
    Ok(merged)
}

/// Records an Update-operation managed-fields entry for `manager` (used by
/// POST/PUT/non-apply PATCH): the fields set in `new` that differ from `old`
/// (or all fields of `new` when `old` is None) become owned by `manager` with
/// operation "Update", and are taken from every other manager, Apply entries
/// included, as a real server does (updates never conflict; a later apply of
/// a different value then conflicts with this manager). Fields the update
/// removed are nobody's anymore.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let s = Schema::new(new.get("kind").and_then(Value::as_str).unwrap_or_default());
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let empty = json!({});
    let before = old.unwrap_or(&empty);
    let now_set = field_set(&strip(new, false, true), s);
    let changed: FieldSet = now_set
        .iter()
        .filter(|p| match (lookup(before, p), lookup(new, p)) {
            (None, _) => true,
            (Some(b), Some(a)) => is_leaf(&now_set, p) && differs(Some(b), a),
            (Some(_), None) => false,
        })
        .cloned()
        .collect();
    // A client that sends managedFields sets them; one that drops them keeps the old ones.
    let mut entries = entries_of(new);
    if entries.is_empty() {
        entries = old.map(entries_of).unwrap_or_default();
    }
    if take_ownership(before, new, &mut entries, None, true).is_err() {
        return; // forced: cannot happen
    }
    if !changed.is_empty() {
        let mine = entries.iter_mut().find(|e| {
            e.is(manager, "Update")
                && e.text("apiVersion") == api_version
                && e.text("subresource").is_empty()
        });
        match mine {
            Some(entry) => {
                entry.set.extend(changed);
                entry.raw.insert("time".into(), json!(now));
            }
            None => entries.push(Entry::new(manager, "Update", &api_version, now, changed)),
        }
    }
    store_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-27T19:00:00Z";
    const LATER: &str = "2026-11-27T20:00:00Z";

    fn smp(target: Value, patch: Value) -> Value {
        strategic_merge_patch(&target, &patch, "Deployment").unwrap()
    }

    fn pod_spec(containers: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers}}}})
    }

    fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    /// What the server hands in: a live object with server-set metadata.
    fn stored(mut obj: Value) -> Value {
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!("u-1"));
        meta.insert("resourceVersion".into(), json!("7"));
        meta.insert("creationTimestamp".into(), json!(NOW));
        obj
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        entries_of(obj)
            .iter()
            .map(|e| {
                (
                    e.text("manager").to_string(),
                    e.text("operation").to_string(),
                )
            })
            .collect()
    }

    fn owned(obj: &Value, manager: &str, operation: &str) -> Vec<String> {
        let entries = entries_of(obj);
        let entry = entries.iter().find(|e| e.is(manager, operation));
        entry.map_or_else(Vec::new, |e| {
            e.set.iter().map(|p| display_path(p)).collect()
        })
    }

    fn conflict(result: Result<Value, PatchError>) -> (String, Vec<String>) {
        match result {
            Err(PatchError::Conflict { message, fields }) => (message, fields),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn merge_patch_rfc7386_appendix_a() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn json_patch_add_inserts_members_and_array_items() {
        let doc = json!({"a": [1, 3], "o": {}});
        let patch = json!([
            {"op": "add", "path": "/a/1", "value": 2},
            {"op": "add", "path": "/a/-", "value": 4},
            {"op": "add", "path": "/o/k", "value": {"x": null}},
            {"op": "add", "path": "/a/0", "value": 0},
        ]);
        let want = json!({"a": [0, 1, 2, 3, 4], "o": {"k": {"x": null}}});
        assert_eq!(json_patch(&doc, &patch).unwrap(), want);
    }

    #[test]
    fn json_patch_remove_and_replace() {
        let doc = json!({"spec": {"replicas": 1, "paused": true}, "list": ["a", "b", "c"]});
        let patch = json!([
            {"op": "remove", "path": "/spec/paused"},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "remove", "path": "/list/1"},
            {"op": "replace", "path": "/list/0", "value": "z"},
        ]);
        let want = json!({"spec": {"replicas": 3}, "list": ["z", "c"]});
        assert_eq!(json_patch(&doc, &patch).unwrap(), want);
        let whole = json!([{"op": "replace", "path": "", "value": {"new": 1}}]);
        assert_eq!(json_patch(&doc, &whole).unwrap(), json!({"new": 1}));
    }

    #[test]
    fn json_patch_move_and_copy() {
        let doc = json!({"a": {"x": 1}, "b": [1, 2]});
        let patch = json!([
            {"op": "copy", "from": "/a", "path": "/c"},
            {"op": "move", "from": "/a/x", "path": "/b/0"},
            {"op": "move", "from": "/b/2", "path": "/y"},
        ]);
        let want = json!({"a": {}, "b": [1, 1], "c": {"x": 1}, "y": 2});
        assert_eq!(json_patch(&doc, &patch).unwrap(), want);
        let into_child = json!([{"op": "move", "from": "/a", "path": "/a/x/y"}]);
        assert!(matches!(
            json_patch(&doc, &into_child),
            Err(PatchError::BadRequest(_))
        ));
    }

    #[test]
    fn json_patch_test_passes_or_fails_the_whole_patch() {
        let doc = json!({"metadata": {"resourceVersion": "7"}, "n": 1});
        let ok = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
            {"op": "test", "path": "/n", "value": 1.0},
            {"op": "replace", "path": "/n", "value": 2},
        ]);
        assert_eq!(json_patch(&doc, &ok).unwrap()["n"], json!(2));
        let stale = json!([
            {"op": "replace", "path": "/n", "value": 2},
            {"op": "test", "path": "/metadata/resourceVersion", "value": "6"},
        ]);
        let err = json_patch(&doc, &stale).unwrap_err();
        assert_eq!(
            err,
            PatchError::Invalid(
                "testing value /metadata/resourceVersion failed: test failed".into()
            )
        );
        assert_eq!(doc["n"], json!(1));
    }

    #[test]
    fn json_patch_pointer_escapes() {
        let doc = json!({"metadata": {"annotations": {"a/b": "1", "m~n": "2"}}});
        let patch = json!([
            {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "x"},
            {"op": "remove", "path": "/metadata/annotations/m~0n"},
            {"op": "add", "path": "/metadata/annotations/example.com~1key", "value": "y"},
        ]);
        let want = json!({"metadata": {"annotations": {"a/b": "x", "example.com/key": "y"}}});
        assert_eq!(json_patch(&doc, &patch).unwrap(), want);
    }

    #[test]
    fn json_patch_missing_paths_are_invalid() {
        let doc = json!({"a": {"b": 1}, "l": [1]});
        for op in [
            json!({"op": "remove", "path": "/a/c"}),
            json!({"op": "replace", "path": "/a/c", "value": 1}),
            json!({"op": "add", "path": "/x/y", "value": 1}),
            json!({"op": "add", "path": "/l/2", "value": 1}),
            json!({"op": "add", "path": "/l/01", "value": 1}),
            json!({"op": "test", "path": "/a/c", "value": null}),
            json!({"op": "copy", "from": "/nope", "path": "/x"}),
            json!({"op": "move", "from": "/l/1", "path": "/x"}),
        ] {
            let result = json_patch(&doc, &json!([op]));
            assert!(
                matches!(result, Err(PatchError::Invalid(_))),
                "{op}: {result:?}"
            );
        }
    }

    #[test]
    fn json_patch_malformed_is_a_bad_request() {
        let doc = json!({"a": 1});
        for patch in [
            json!({"op": "add"}),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "/b"}]),
            json!([{"path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
        ] {
            let result = json_patch(&doc, &patch);
            assert!(
                matches!(result, Err(PatchError::BadRequest(_))),
                "{patch}: {result:?}"
            );
        }
    }

    #[test]
    fn smp_merges_containers_by_name() {
        let live = pod_spec(json!([
            {"name": "web", "image": "nginx:1", "args": ["a"]},
            {"name": "sidecar", "image": "envoy"}
        ]));
        let patch = pod_spec(json!([
            {"name": "web", "image": "nginx:2"},
            {"name": "init", "image": "busybox", "tty": null}
        ]));
        let want = pod_spec(json!([
            {"name": "web", "image": "nginx:2", "args": ["a"]},
            {"name": "sidecar", "image": "envoy"},
            {"name": "init", "image": "busybox"}
        ]));
        assert_eq!(smp(live, patch), want);
    }

    #[test]
    fn smp_merges_env_and_container_ports_by_key() {
        let live = pod_spec(json!([{"name": "web",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "ports": [{"containerPort": 80, "name": "http"},
                      {"containerPort": 53, "protocol": "UDP"}]}]));
        let patch = pod_spec(json!([{"name": "web",
            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
            "ports": [{"containerPort": 80, "protocol": "TCP", "hostPort": 8080}]}]));
        let want = pod_spec(json!([{"name": "web",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"},
                    {"name": "C", "value": "4"}],
            "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP", "hostPort": 8080},
                      {"containerPort": 53, "protocol": "UDP"}]}]));
        assert_eq!(smp(live, patch), want);
    }

    #[test]
    fn smp_merges_service_ports_by_port_and_protocol() {
        let live = json!({"spec": {"ports": [
            {"port": 53, "protocol": "UDP", "targetPort": 53},
            {"port": 53, "protocol": "TCP", "targetPort": 53},
            {"port": 80, "targetPort": 8080}
        ]}});
        let patch = json!({"spec": {"ports": [
            {"port": 80, "targetPort": 9090},
            {"port": 53, "protocol": "UDP", "name": "dns"},
            {"port": 443, "targetPort": 8443}
        ]}});
        let merged = strategic_merge_patch(&live, &patch, "Service").unwrap();
        let want = json!({"spec": {"ports": [
            {"port": 53, "protocol": "UDP", "targetPort": 53, "name": "dns"},
            {"port": 53, "protocol": "TCP", "targetPort": 53},
            {"port": 80, "targetPort": 9090},
            {"port": 443, "targetPort": 8443}
        ]}});
        assert_eq!(merged, want);
    }

    #[test]
    fn smp_delete_directive_removes_a_container_or_a_map() {
        let live = pod_spec(json!([{"name": "web", "image": "a"}, {"name": "old", "image": "b"}]));
        let patch = pod_spec(json!([{"$patch": "delete", "name": "old"}]));
        assert_eq!(
            smp(live.clone(), patch),
            pod_spec(json!([{"name": "web", "image": "a"}]))
        );
        let mut live = live;
        live["spec"]["strategy"] = json!({"type": "Recreate"});
        let patch = json!({"spec": {"strategy": {"$patch": "delete"}}});
        assert!(smp(live, patch)["spec"].get("strategy").is_none());
    }

    #[test]
    fn smp_replace_directive_on_lists_and_maps() {
        let live = pod_spec(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]));
        let patch = pod_spec(json!([{"name": "c", "image": "z"}, {"$patch": "replace"}]));
        assert_eq!(
            smp(live, patch),
            pod_spec(json!([{"name": "c", "image": "z"}]))
        );
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}});
        assert_eq!(
            smp(live, patch),
            json!({"metadata": {"labels": {"c": "3"}}})
        );
    }

    #[test]
    fn smp_finalizers_merge_as_a_set_and_delete_from_primitive_list() {
        let live = json!({"metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {"finalizers": ["b", "c"]}});
        assert_eq!(
            smp(live.clone(), patch),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}})
        );
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        assert_eq!(smp(live, patch), json!({"metadata": {"finalizers": ["b"]}}));
    }

    #[test]
    fn smp_retain_keys_drops_unlisted_fields() {
        let live = json!({"spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        assert_eq!(
            smp(live, patch),
            json!({"spec": {"strategy": {"type": "Recreate"}}})
        );
    }

    #[test]
    fn smp_set_element_order_reorders_items() {
        let live = pod_spec(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
        let mut patch = pod_spec(json!([{"name": "b", "image": "x"}]));
        patch["spec"]["template"]["spec"]["$setElementOrder/containers"] =
            json!([{"name": "c"}, {"name": "b"}, {"name": "a"}]);
        let want = pod_spec(json!([{"name": "c"}, {"name": "b", "image": "x"}, {"name": "a"}]));
        assert_eq!(smp(live, patch), want);
    }

    #[test]
    fn smp_atomic_lists_nulls_and_unknown_kinds() {
        let live = json!({"spec": {"tolerations": [{"key": "a"}], "x": 1, "y": 2}});
        let patch = json!({"spec": {"tolerations": [{"key": "b"}], "x": null}});
        let want = json!({"spec": {"tolerations": [{"key": "b"}], "y": 2}});
        assert_eq!(smp(live, patch), want);
        let live = pod_spec(json!([{"name": "a"}]));
        let patch = pod_spec(json!([{"name": "b"}]));
        let merged = strategic_merge_patch(&live, &patch, "Widget").unwrap();
        assert_eq!(merged, pod_spec(json!([{"name": "b"}])));
    }

    #[test]
    fn smp_rejects_bad_directives_and_missing_merge_keys() {
        let live = pod_spec(json!([{"name": "a"}]));
        for patch in [
            pod_spec(json!([{"image": "no-name"}])),
            pod_spec(json!([{"name": "a", "$patch": "explode"}])),
            json!({"spec": {"$patch": "explode"}}),
            json!(["not", "a", "map"]),
        ] {
            let result = strategic_merge_patch(&live, &patch, "Deployment");
            assert!(
                matches!(result, Err(PatchError::BadRequest(_))),
                "{patch}: {result:?}"
            );
        }
    }

    #[test]
    fn ssa_creates_with_a_fields_v1_apply_entry() {
        let applied = deployment(json!({"replicas": 2, "template": {"metadata": {"labels":
            {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx",
            "ports": [{"containerPort": 80}]}]}}}));
        let mut applied = applied;
        applied["status"] = json!({"replicas": 5});
        let obj = server_side_apply(None, &applied, "kubectl", false, NOW).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(2));
        assert_eq!(obj["metadata"]["name"], json!("web"));
        assert!(obj.get("status").is_none());
        let entry = &obj["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], json!("kubectl"));
        assert_eq!(entry["operation"], json!("Apply"));
        assert_eq!(entry["apiVersion"], json!("apps/v1"));
        assert_eq!(entry["time"], json!(NOW));
        assert_eq!(entry["fieldsType"], json!("FieldsV1"));
        let want = json!({"f:spec": {"f:replicas": {}, "f:template": {
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                ".": {}, "f:image": {}, "f:name": {},
                "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                    ".": {}, "f:containerPort": {}}}}}}}}});
        assert_eq!(entry["fieldsV1"], want);
    }

    #[test]
    fn ssa_reapply_without_a_field_removes_it() {
        let mut first = deployment(json!({"replicas": 2, "paused": true, "template": {"spec":
            {"containers": [{"name": "web", "image": "a", "env": [{"name": "X", "value": "1"}]},
                            {"name": "extra", "image": "b"}]}}}));
        first["metadata"]["labels"] = json!({"team": "x"});
        first["metadata"]["finalizers"] = json!(["a", "b"]);
        let live = stored(server_side_apply(None, &first, "kubectl", false, NOW).unwrap());
        let second = deployment(json!({"replicas": 2, "template": {"spec":
            {"containers": [{"name": "web", "image": "a"}]}}}));
        let obj = server_side_apply(Some(&live), &second, "kubectl", false, LATER).unwrap();
        let want = json!({"replicas": 2, "template": {"spec":
            {"containers": [{"name": "web", "image": "a"}]}}});
        assert_eq!(obj["spec"], want);
        assert!(obj["metadata"].get("labels").is_none());
        assert!(obj["metadata"].get("finalizers").is_none());
        assert_eq!(obj["metadata"]["uid"], json!("u-1"));
        assert_eq!(obj["metadata"]["resourceVersion"], json!("7"));
        assert_eq!(obj["metadata"]["managedFields"][0]["time"], json!(LATER));
    }

    #[test]
    fn ssa_two_appliers_own_different_fields() {
        let mut a = deployment(json!({"replicas": 1}));
        a["metadata"]["labels"] = json!({"a": "1"});
        let live = stored(server_side_apply(None, &a, "alpha", false, NOW).unwrap());
        let mut b = deployment(json!({"paused": true}));
        b["metadata"]["labels"] = json!({"b": "2"});
        let live = stored(server_side_apply(Some(&live), &b, "beta", false, NOW).unwrap());
        assert_eq!(live["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(
            owned(&live, "alpha", "Apply"),
            [".metadata.labels.a", ".spec.replicas"]
        );
        assert_eq!(
            owned(&live, "beta", "Apply"),
            [".metadata.labels.b", ".spec.paused"]
        );
        // alpha drops its label: only alpha's goes.
        let a2 = deployment(json!({"replicas": 1}));
        let obj = server_side_apply(Some(&live), &a2, "alpha", false, LATER).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(obj["spec"], json!({"replicas": 1, "paused": true}));
    }

    #[test]
    fn ssa_conflict_names_the_field_and_the_manager() {
        let live = server_side_apply(
            None,
            &deployment(json!({"replicas": 1})),
            "alpha",
            false,
            NOW,
        );
        let live = stored(live.unwrap());
        let result = server_side_apply(
            Some(&live),
            &deployment(json!({"replicas": 3})),
            "beta",
            false,
            NOW,
        );
        let (message, fields) = conflict(result);
        assert_eq!(
            message,
            "Apply failed with 1 conflict: conflict with \"alpha\": .spec.replicas"
        );
        assert_eq!(fields, [".spec.replicas"]);
        // The same value is shared ownership, not a conflict; it stays when one lets go.
        let same = deployment(json!({"replicas": 1}));
        let live = stored(server_side_apply(Some(&live), &same, "beta", false, NOW).unwrap());
        assert_eq!(owned(&live, "beta", "Apply"), [".spec.replicas"]);
        let obj = server_side_apply(Some(&live), &deployment(json!({})), "alpha", false, NOW);
        assert_eq!(obj.unwrap()["spec"]["replicas"], json!(1));
    }

    #[test]
    fn ssa_conflicts_with_several_managers_are_grouped() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1", "b": "2"}});
        let mut live = live;
        record_update(None, &mut live, "kubectl-create", NOW);
        let mut one = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"c": "3"}});
        let live = server_side_apply(Some(&live), &one, "helm", false, NOW).unwrap();
        one["data"] = json!({"a": "x", "b": "y", "c": "z"});
        let (message, fields) = conflict(server_side_apply(Some(&live), &one, "me", false, NOW));
        assert_eq!(
            message,
            "Apply failed with 3 conflicts: conflicts with \"helm\":\n- .data.c\n\
             conflicts with \"kubectl-create\" using v1:\n- .data.a\n- .data.b"
        );
        assert_eq!(fields.len(), 3);
    }

    #[test]
    fn ssa_force_takes_ownership() {
        let live = server_side_apply(
            None,
            &deployment(json!({"replicas": 1, "paused": true})),
            "alpha",
            false,
            NOW,
        );
        let live = stored(live.unwrap());
        let forced = server_side_apply(
            Some(&live),
            &deployment(json!({"replicas": 3})),
            "beta",
            true,
            NOW,
        );
        let live = stored(forced.unwrap());
        assert_eq!(live["spec"]["replicas"], json!(3));
        assert_eq!(owned(&live, "alpha", "Apply"), [".spec.paused"]);
        assert_eq!(owned(&live, "beta", "Apply"), [".spec.replicas"]);
        // alpha no longer owns replicas: applying without it leaves beta's value.
        let obj = server_side_apply(
            Some(&live),
            &deployment(json!({"paused": true})),
            "alpha",
            false,
            NOW,
        );
        assert_eq!(obj.unwrap()["spec"]["replicas"], json!(3));
    }

    #[test]
    fn ssa_conflicts_with_fields_recorded_by_updates() {
        let mut live = deployment(json!({"replicas": 1, "template": {"spec": {"containers":
            [{"name": "web", "image": "a"}]}}}));
        record_update(None, &mut live, "kubectl-create", NOW);
        let live = stored(live);
        let applied = deployment(json!({"replicas": 1, "template": {"spec": {"containers":
            [{"name": "web", "image": "b"}]}}}));
        let (message, fields) = conflict(server_side_apply(
            Some(&live),
            &applied,
            "kubectl",
            false,
            NOW,
        ));
        assert_eq!(
            message,
            "Apply failed with 1 conflict: conflict with \"kubectl-create\" using apps/v1: \
             .spec.template.spec.containers[name=\"web\"].image"
        );
        assert_eq!(
            fields,
            [".spec.template.spec.containers[name=\"web\"].image"]
        );
        let obj = server_side_apply(Some(&live), &applied, "kubectl", true, NOW).unwrap();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["image"],
            json!("b")
        );
        assert_eq!(
            managers(&obj),
            [
                ("kubectl-create".into(), "Update".into()),
                ("kubectl".into(), "Apply".into())
            ]
        );
        assert!(
            !owned(&obj, "kubectl-create", "Update")
                .iter()
                .any(|p| p.ends_with(".image"))
        );
    }

    #[test]
    fn ssa_rejects_managed_fields_missing_type_and_stale_resource_version() {
        let live =
            stored(server_side_apply(None, &deployment(json!({})), "a", false, NOW).unwrap());
        let mut with_mf = deployment(json!({}));
        with_mf["metadata"]["managedFields"] = json!([]);
        let err = server_side_apply(Some(&live), &with_mf, "a", false, NOW).unwrap_err();
        assert_eq!(
            err,
            PatchError::BadRequest("metadata.managedFields must be nil".into())
        );
        let no_kind = json!({"apiVersion": "v1", "metadata": {"name": "x"}});
        assert!(matches!(
            server_side_apply(None, &no_kind, "a", false, NOW),
            Err(PatchError::BadRequest(_))
        ));
        let mut stale = deployment(json!({"replicas": 2}));
        stale["metadata"]["resourceVersion"] = json!("6");
        conflict(server_side_apply(Some(&live), &stale, "a", false, NOW));
        stale["metadata"]["resourceVersion"] = json!("7");
        let obj = server_side_apply(Some(&live), &stale, "a", false, NOW).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(2));
        assert!(
            !owned(&obj, "a", "Apply")
                .iter()
                .any(|p| p.contains("resourceVersion"))
        );
    }

    #[test]
    fn ssa_noop_keeps_the_entry_time_and_live_status() {
        let applied = deployment(json!({"replicas": 2}));
        let mut live = stored(server_side_apply(None, &applied, "a", false, NOW).unwrap());
        live["status"] = json!({"readyReplicas": 2});
        let obj = server_side_apply(Some(&live), &applied, "a", false, LATER).unwrap();
        assert_eq!(obj, live);
    }

    #[test]
    fn ssa_keeps_server_set_fields_of_keyed_items() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"ports": [{"port": 53, "protocol": "UDP"},
                               {"port": 53, "targetPort": 5353}]}});
        let mut live = stored(server_side_apply(None, &svc, "kubectl", false, NOW).unwrap());
        live["spec"]["clusterIP"] = json!("10.96.0.10");
        live["spec"]["ports"][1]["nodePort"] = json!(30053);
        let obj = server_side_apply(Some(&live), &svc, "kubectl", false, LATER).unwrap();
        assert_eq!(obj, live);
        let keys = owned(&obj, "kubectl", "Apply");
        assert!(
            keys.contains(&".spec.ports[port=53,protocol=\"UDP\"]".to_string()),
            "{keys:?}"
        );
        assert!(keys.contains(&".spec.ports[port=53,protocol=\"TCP\"].targetPort".to_string()));
    }

    #[test]
    fn ssa_custom_resources_have_atomic_lists_but_metadata_sets() {
        let cr = |items: Value, finalizers: Value| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w", "finalizers": finalizers}, "spec": {"containers": items}})
        };
        let first = cr(json!([{"name": "a"}, {"name": "b"}]), json!(["x"]));
        let mut live = stored(server_side_apply(None, &first, "op", false, NOW).unwrap());
        live["metadata"]["finalizers"] = json!(["x", "controller"]);
        let second = cr(json!([{"name": "c"}]), json!(["y"]));
        let obj = server_side_apply(Some(&live), &second, "op", false, NOW).unwrap();
        assert_eq!(obj["spec"]["containers"], json!([{"name": "c"}]));
        assert_eq!(obj["metadata"]["finalizers"], json!(["controller", "y"]));
        let keys = owned(&obj, "op", "Apply");
        assert_eq!(keys, [".metadata.finalizers[=\"y\"]", ".spec.containers"]);
    }

    #[test]
    fn record_update_keeps_managed_fields_a_client_rewrote() {
        let applied = deployment(json!({"replicas": 1}));
        let live = server_side_apply(None, &applied, "kubectl", false, NOW).unwrap();
        let mut new = live.clone();
        new["metadata"]["managedFields"][0]["manager"] = json!("renamed");
        record_update(Some(&live), &mut new, "kubectl-patch", LATER);
        assert_eq!(managers(&new), [("renamed".into(), "Apply".into())]);
        new["metadata"]["managedFields"] = json!([]);
        record_update(Some(&live), &mut new, "kubectl-patch", LATER);
        assert_eq!(managers(&new), [("kubectl".into(), "Apply".into())]);
    }

    #[test]
    fn record_update_owns_all_fields_on_create() {
        let mut obj = stored(deployment(json!({"replicas": 1})));
        obj["metadata"]["labels"] = json!({"app": "web"});
        record_update(None, &mut obj, "kubectl-create", NOW);
        let entry = &obj["metadata"]["managedFields"][0];
        assert_eq!(entry["operation"], json!("Update"));
        assert_eq!(entry["apiVersion"], json!("apps/v1"));
        let want = json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}}});
        assert_eq!(entry["fieldsV1"], want);
    }

    #[test]
    fn record_update_moves_changed_fields_and_drops_removed_ones() {
        let mut live = deployment(json!({"replicas": 1, "paused": true}));
        live["metadata"]["labels"] = json!({"a": "1"});
        let live = server_side_apply(None, &live, "kubectl", false, NOW).unwrap();
        let mut new = live.clone();
        new["spec"]["replicas"] = json!(4);
        new["metadata"]["labels"] = json!({});
        record_update(Some(&live), &mut new, "kubectl-scale", LATER);
        assert_eq!(owned(&new, "kubectl", "Apply"), [".spec.paused"]);
        assert_eq!(owned(&new, "kubectl-scale", "Update"), [".spec.replicas"]);
        // A second update by the same manager merges into its entry.
        let old = new.clone();
        new["spec"]["paused"] = json!(false);
        record_update(Some(&old), &mut new, "kubectl-scale", LATER);
        assert_eq!(
            owned(&new, "kubectl-scale", "Update"),
            [".spec.paused", ".spec.replicas"]
        );
        assert_eq!(managers(&new), [("kubectl-scale".into(), "Update".into())]);
        // No change, no entry.
        let mut same = new.clone();
        record_update(Some(&new), &mut same, "someone", LATER);
        assert_eq!(same, new);
    }

    #[test]
    fn fields_v1_round_trips_and_prints_paths() {
        let tree = json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"x\"": {}}},
            "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}},
                       "f:items": {"i:0": {}}}});
        let set = from_fields_v1(&tree);
        assert_eq!(to_fields_v1(&set), tree);
        let paths: Vec<String> = set.iter().map(|p| display_path(p)).collect();
        assert_eq!(
            paths,
            [
                ".metadata.finalizers",
                ".metadata.finalizers[=\"x\"]",
                ".spec.items[0]",
                ".spec.ports[port=80,protocol=\"TCP\"]",
                ".spec.ports[port=80,protocol=\"TCP\"].port"
            ]
        );
    }
}
