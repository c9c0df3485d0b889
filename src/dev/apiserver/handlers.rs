//! Requests: routing by path, then discovery, OpenAPI, or an operation on a
//! resource (get, list, watch, create, update, patch, delete).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::patch::{self, PatchError};
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::Stored;
use super::{State, openapi};

type Reply = Result<Response, ApiError>;

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// The one entry point: every request lands here.
pub(crate) async fn handle(
    Extract(state): Extract<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    // As a real server does, a token it does not know is refused (401),
    // so clients' credential errors can be tested. A request without
    // credentials is served as anonymous: kubectl sends no token to a plain
    // HTTP server.
    if let Some(auth) = headers.get("authorization")
        && auth.as_bytes() != format!("Bearer {}", super::TOKEN).as_bytes()
    {
        return ApiError::unauthorized().into_response();
    }
    let path = uri.path().trim_end_matches('/').to_string();
    let r = route(&state, &method, &path, &query, &headers, body).await;
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn route(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    // Protobuf bodies of the built-in kinds kubectl's imperative commands
    // send are read as the JSON they carry; any other protobuf or CBOR body
    // is refused with 415, on which client-go sends it again as JSON.
    let mut body = body;
    if let Some(ct) = headers.get("content-type").and_then(|v| v.to_str().ok())
        && (ct.contains("protobuf") || ct.contains("cbor"))
    {
        let decoded = if ct.contains("protobuf") {
            super::protobuf::to_json(&body)
        } else {
            Err("CBOR is not read here".to_string())
        };
        match decoded {
            Ok(v) => body = Bytes::from(serde_json::to_vec(&v).expect("JSON values serialise")),
            Err(why) => {
                return Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format ({ct}: {why}) - accepted \
                     media types include: application/json, application/yaml, \
                     application/json-patch+json, application/merge-patch+json, \
                     application/strategic-merge-patch+json, application/apply-patch+yaml"
                )));
            }
        }
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Ok(ok_json(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-drctl-dev",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64",
            }),
        )),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(ok_json(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }),
        )),
        ["apis"] => Ok(ok_json(StatusCode::OK, &group_list(state))),
        ["apis", group] => group_list(state)["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == *group).cloned())
            .map(|mut g| {
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                ok_json(StatusCode::OK, &g)
            })
            .ok_or_else(|| ApiError::not_found_path(path)),
        ["api", "v1"] => resource_list(state, "", "v1", path),
        ["apis", group, version] => resource_list(state, group, version, path),
        ["openapi", "v2"] => Ok((
            StatusCode::OK,
            [("content-type", openapi::V2_CONTENT_TYPE)],
            openapi::v2(),
        )
            .into_response()),
        ["openapi", "v3"] => Ok(ok_json(StatusCode::OK, &openapi::index(&state.types()))),
        ["openapi", "v3", rest @ ..] => openapi::group_version(&rest.join("/"), &state.types())
            .map(|d| ok_json(StatusCode::OK, &d))
            .ok_or_else(|| ApiError::not_found_path(path)),
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if method == Method::POST => self_subject_access_review(&body),
        ["api", "v1", rest @ ..] => {
            resource(state, method, "", "v1", rest, q, headers, body, path).await
        }
        ["apis", group, version, rest @ ..] => {
            resource(state, method, group, version, rest, q, headers, body, path).await
        }
        _ => Err(ApiError::not_found_path(path)),
    }
}

fn group_list(state: &State) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in state.types().iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone());
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(state: &State, group: &str, version: &str, path: &str) -> Reply {
    let types: Vec<ResourceType> = state
        .types()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(ApiError::not_found_path(path));
    }
    let gv = types[0].api_version();
    let resources: Vec<Value> = types.iter().flat_map(|t| t.discovery()).collect();
    Ok(ok_json(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// What a resource path names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    /// `configmaps` or `deployments.apps`, as errors name a resource.
    fn resource(&self) -> String {
        if self.rt.group.is_empty() {
            self.rt.plural.clone()
        } else {
            format!("{}.{}", self.rt.plural, self.rt.group)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    state: &Arc<State>,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    path: &str,
) -> Reply {
    // `namespaces/{ns}/{plural}/…` unless it is a namespace's own path
    // (`namespaces/{name}` and `namespaces/{name}/status`).
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] if !["status", "finalize"].contains(plural) => {
            (Some(ns.to_string()), [&[*plural][..], more].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::not_found_path(path)),
    };
    let rt = state
        .find(group, version, plural)
        .ok_or_else(|| ApiError::not_found_path(path))?;
    if namespace.is_some() && !rt.namespaced {
        return Err(ApiError::not_found_path(path));
    }
    if rt.namespaced && namespace.is_none() && (name.is_some() || *method != Method::GET) {
        return Err(ApiError::not_found_path(path));
    }
    if let Some(s) = &sub
        && !(s == "status" && rt.status)
    {
        return Err(ApiError::not_found_path(path));
    }
    let t = Target {
        rt,
        namespace,
        name,
        sub,
    };
    let manager = q
        .get("fieldManager")
        .cloned()
        .or_else(|| {
            headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    match (method.clone(), &t.name) {
        (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(state, &t, q).await
        }
        (Method::GET, None) => list(state, &t, q).await,
        (Method::GET, Some(name)) => {
            let s = load(state, &t, name).await?;
            Ok(ok_json(StatusCode::OK, &with_rv(s.object, s.revision)))
        }
        (Method::POST, None) => create(state, &t, &json_body(&body)?, &manager, dry_run).await,
        (Method::PUT, Some(name)) => {
            update(state, &t, name, &json_body(&body)?, &manager, dry_run).await
        }
        (Method::PATCH, Some(name)) => {
            let ctype = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let force = q.get("force").is_some_and(|f| f == "true");
            patch_object(
                state,
                &t,
                name,
                &ctype,
                &body,
                q.get("fieldManager"),
                &manager,
                force,
                dry_run,
            )
            .await
        }
        (Method::DELETE, Some(name)) => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                json_body(&body)?
            };
            delete(state, &t, name, &opts, dry_run).await
        }
        (Method::DELETE, None) => delete_collection(state, &t, q, dry_run).await,
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({path})"
        ))),
    }
}

/// A SelfSubjectAccessReview (`drctl doctor`): the server authorizes every
/// request it authenticates, so every review is allowed. Answered, not
/// stored, as on a real server. JSON only: `kubectl auth can-i` sends its
/// review as protobuf and does not fall back on the 415.
fn self_subject_access_review(body: &[u8]) -> Reply {
    let mut review = json_body(body)?;
    review["status"] = json!({
        "allowed": true,
        "reason": "the stand-in API server authorizes every request it authenticates",
    });
    Ok(ok_json(StatusCode::CREATED, &review))
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| {
            ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
        })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be an object",
        ));
    }
    Ok(v)
}

fn with_rv(mut obj: Value, rv: i64) -> Value {
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    obj
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn load(state: &State, t: &Target, name: &str) -> Result<Stored, ApiError> {
    let key = state.store.key(&t.rt, t.namespace.as_deref(), name);
    state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(&t.resource(), name))
}

/// DNS-1123: a subdomain for most names, a label for namespaces.
fn check_name(t: &Target, name: &str) -> Result<(), ApiError> {
    let label = t.rt.kind == "Namespace";
    let max = if label { 63 } else { 253 };
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let edges = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    // RBAC names are path segments only (`system:controller:x` is valid),
    // and custom resources are checked by their own schemas, which this
    // server does not enforce.
    let custom = !t.rt.builtin || t.rt.kind.starts_with("Cluster") || t.rt.kind.starts_with("Role");
    if name.is_empty()
        || name.len() > max
        || (!custom
            && (!name.chars().all(ok_char)
                || !edges(name.chars().next())
                || !edges(name.chars().last())))
        || name.contains('/')
        || name == "."
        || name == ".."
    {
        return Err(ApiError::invalid(
            &t.rt.kind,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters{} and must start and end with an alphanumeric character",
                if label { "label" } else { "subdomain" },
                if label { ", '-'" } else { ", '-' or '.'" }
            ),
        ));
    }
    Ok(())
}

/// Makes sure the namespace exists (for startup).
pub(crate) async fn ensure_namespace(state: &State, name: &str) -> Result<(), ApiError> {
    let rt = state.builtin("Namespace").clone();
    let key = state.store.key(&rt, None, name);
    if state.store.get(&key).await?.is_none() {
        let obj = prepare_new(
            &Target {
                rt,
                namespace: None,
                name: None,
                sub: None,
            },
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            "drctl-dev",
        );
        state.store.create(&key, &obj).await?;
    }
    Ok(())
}

/// What a real server does to every write of some kinds: a Secret's
/// `stringData` is write-only, merged into `data` base64-encoded.
fn normalize(t: &Target, obj: &mut Value) {
    if t.rt.kind == "Secret"
        && let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        for (k, v) in plain {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

/// Server-set fields of a new object, and per-kind defaults.
fn prepare_new(t: &Target, mut obj: Value, manager: &str) -> Value {
    normalize(t, &mut obj);
    let md = obj["metadata"]
        .as_object_mut()
        .expect("checked: metadata is an object");
    md.remove("resourceVersion");
    md.remove("deletionTimestamp");
    md.remove("managedFields");
    md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    md.insert("creationTimestamp".into(), json!(now()));
    md.insert("generation".into(), json!(1));
    if t.rt.status
        && !["Namespace", "CustomResourceDefinition"].contains(&t.rt.kind.as_str())
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    match t.rt.kind.as_str() {
        "Namespace" => {
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            obj["status"] = json!({"phase": "Active"});
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        }
        "Service" => {
            let t = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_string();
            let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if !headless && obj.pointer("/spec/clusterIP").is_none() && t != "ExternalName" {
                let uid = obj["metadata"]["uid"]
                    .as_str()
                    .unwrap_or("")
                    .as_bytes()
                    .to_vec();
                let ip = format!("10.96.{}.{}", uid[0] % 250, 1 + uid[1] % 250);
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
            if (t == "NodePort" || t == "LoadBalancer")
                && let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut)
            {
                for (i, p) in ports.iter_mut().enumerate() {
                    if p.get("nodePort").is_none() {
                        p["nodePort"] = json!(30000 + i as u32 * 7 + 100);
                    }
                }
            }
        }
        "CustomResourceDefinition" => crd_status(&mut obj),
        _ => {}
    }
    patch::record_update(None, &mut obj, manager, &now());
    obj
}

/// A CRD is accepted and established at once: there is no controller.
fn crd_status(crd: &mut Value) {
    let names = crd["spec"]["names"].clone();
    let versions: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool().unwrap_or(false))
        .map(|v| v["name"].clone())
        .collect();
    let at = now();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": versions,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": at},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": at},
        ],
    });
}

/// Checks kind, apiVersion, name and namespace of a body against the path.
fn check_body(t: &Target, obj: &mut Value, name: Option<&str>) -> Result<(), ApiError> {
    let want_av = t.rt.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => obj["apiVersion"] = json!(want_av),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != t.rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.rt.kind
            )));
        }
        _ => obj["kind"] = json!(t.rt.kind),
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if let Some(ns) = &t.namespace {
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(bns) if !bns.is_empty() && bns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if let Some(name) = name {
        match obj.pointer("/metadata/name").and_then(Value::as_str) {
            Some(b) if b != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({b}) does not match the name on the URL ({name})"
                )));
            }
            _ => obj["metadata"]["name"] = json!(name),
        }
    }
    Ok(())
}

async fn namespace_exists(state: &State, ns: &str) -> Result<(), ApiError> {
    let rt = state.builtin("Namespace");
    if state
        .store
        .get(&state.store.key(rt, None, ns))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("namespaces", ns));
    }
    Ok(())
}

async fn create(state: &State, t: &Target, body: &Value, manager: &str, dry_run: bool) -> Reply {
    let mut obj = body.clone();
    check_body(t, &mut obj, None)?;
    if let Some(ns) = &t.namespace {
        namespace_exists(state, ns).await?;
    }
    let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(g) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                format!("{g}{}", &id[..5])
            }
            None => {
                return Err(ApiError::invalid(
                    &t.rt.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        },
    };
    check_name(t, &name)?;
    obj["metadata"]["name"] = json!(name);
    let obj = prepare_new(t, obj, manager);
    if dry_run {
        return Ok(ok_json(StatusCode::CREATED, &obj));
    }
    let key = state.store.key(&t.rt, t.namespace.as_deref(), &name);
    let rev = state
        .store
        .create(&key, &obj)
        .await?
        .ok_or_else(|| ApiError::already_exists(&t.resource(), &name))?;
    if t.rt.kind == "CustomResourceDefinition" {
        state.register_crd(&obj);
    }
    Ok(ok_json(StatusCode::CREATED, &with_rv(obj, rev)))
}

/// Carries what the server owns from `old` into `new`, and the status rule:
/// on the main resource a status change is ignored, on `/status` only the
/// status changes.
fn carry_over(t: &Target, old: &Value, mut new: Value) -> Value {
    normalize(t, &mut new);
    if t.sub.as_deref() == Some("status") {
        let mut out = old.clone();
        out["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        return out;
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "generation",
        "namespace",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if t.rt.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    if new.get("spec") != old.get("spec") {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if t.rt.kind == "CustomResourceDefinition" {
        crd_status(&mut new);
    }
    new
}

/// Writes `new` over `old` (at `old_rev`); an object being deleted whose
/// last finalizer went is removed instead.
async fn commit(
    state: &State,
    t: &Target,
    name: &str,
    old_rev: i64,
    new: Value,
    code: StatusCode,
) -> Reply {
    let key = state.store.key(&t.rt, t.namespace.as_deref(), name);
    let finalizers_gone = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers_gone {
        let rev = state
            .store
            .delete(&key, old_rev)
            .await?
            .ok_or_else(|| ApiError::conflict(&t.resource(), name, "the object has been modified; please apply your changes to the latest version and try again"))?;
        after_delete(state, t, &new).await?;
        return Ok(ok_json(StatusCode::OK, &with_rv(new, rev)));
    }
    let rev = state
        .store
        .update(&key, &new, old_rev)
        .await?
        .ok_or_else(|| ApiError::conflict(&t.resource(), name, "the object has been modified; please apply your changes to the latest version and try again"))?;
    if t.rt.kind == "CustomResourceDefinition" {
        state.register_crd(&new);
    }
    Ok(ok_json(code, &with_rv(new, rev)))
}

async fn update(
    state: &State,
    t: &Target,
    name: &str,
    body: &Value,
    manager: &str,
    dry_run: bool,
) -> Reply {
    let old = load(state, t, name).await?;
    let mut new = body.clone();
    check_body(t, &mut new, Some(name))?;
    if let Some(rv) = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && rv != old.revision.to_string()
    {
        return Err(ApiError::conflict(
            &t.resource(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.insert(
            "managedFields".into(),
            old.object
                .pointer("/metadata/managedFields")
                .cloned()
                .unwrap_or(json!([])),
        );
    }
    let mut new = carry_over(t, &old.object, new);
    patch::record_update(Some(&old.object), &mut new, manager, &now());
    if dry_run {
        return Ok(ok_json(StatusCode::OK, &with_rv(new, old.revision)));
    }
    commit(state, t, name, old.revision, new, StatusCode::OK).await
}

fn patch_error(t: &Target, name: &str, e: PatchError) -> ApiError {
    match e {
        PatchError::BadRequest(m) => ApiError::bad_request(m),
        PatchError::Invalid(m) => ApiError::invalid(&t.rt.kind, name, m),
        PatchError::Conflict { message, .. } => ApiError::conflict_message(message),
        PatchError::UnsupportedMediaType(m) => ApiError::unsupported_media_type(m),
    }
}

#[allow(clippy::too_many_arguments)]
async fn patch_object(
    state: &State,
    t: &Target,
    name: &str,
    ctype: &str,
    body: &[u8],
    field_manager: Option<&String>,
    manager: &str,
    force: bool,
    dry_run: bool,
) -> Reply {
    let apply = ctype == "application/apply-patch+yaml";
    if apply && field_manager.is_none() {
        return Err(ApiError::invalid(
            &t.rt.kind,
            name,
            "PATCH requests with apply content type must specify fieldManager",
        ));
    }
    let patch_doc: Value = serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| ApiError::bad_request(format!("the body of the request is not valid: {e}")))?;
    // Patches carry no precondition unless they say so: retry on races.
    for _ in 0..5 {
        let key = state.store.key(&t.rt, t.namespace.as_deref(), name);
        let old = state.store.get(&key).await?;
        let at = now();
        let (new, code) = match (ctype, old.as_ref()) {
            ("application/apply-patch+yaml", live) => {
                let mut applied = patch_doc.clone();
                check_body(t, &mut applied, Some(name))?;
                let live_obj = live.map(|s| with_rv(s.object.clone(), s.revision));
                let merged = if t.sub.as_deref() == Some("status") {
                    // An apply to /status sets the status as applied; this
                    // server keeps no field ownership for status.
                    let mut obj = live_obj
                        .clone()
                        .ok_or_else(|| ApiError::not_found(&t.resource(), name))?;
                    obj["status"] = applied.get("status").cloned().unwrap_or(Value::Null);
                    obj
                } else {
                    patch::server_side_apply(live_obj.as_ref(), &applied, manager, force, &at)
                        .map_err(|e| patch_error(t, name, e))?
                };
                match live {
                    None => {
                        if let Some(ns) = &t.namespace {
                            namespace_exists(state, ns).await?;
                        }
                        check_name(t, name)?;
                        let mut obj = merged;
                        let mf = obj["metadata"]["managedFields"].take();
                        let mut obj = prepare_new(t, obj, manager);
                        // The apply's own record, not prepare_new's Update one.
                        match mf {
                            Value::Null => {
                                if let Some(m) = obj["metadata"].as_object_mut() {
                                    m.remove("managedFields");
                                }
                            }
                            mf => obj["metadata"]["managedFields"] = mf,
                        }
                        if dry_run {
                            return Ok(ok_json(StatusCode::CREATED, &obj));
                        }
                        match state.store.create(&key, &obj).await? {
                            Some(rev) => {
                                if t.rt.kind == "CustomResourceDefinition" {
                                    state.register_crd(&obj);
                                }
                                return Ok(ok_json(StatusCode::CREATED, &with_rv(obj, rev)));
                            }
                            None => continue,
                        }
                    }
                    Some(_) => (merged, StatusCode::OK),
                }
            }
            (_, None) => return Err(ApiError::not_found(&t.resource(), name)),
            (ctype, Some(live)) => {
                let mut obj = with_rv(live.object.clone(), live.revision);
                let patched = match ctype {
                    "application/merge-patch+json" => {
                        patch::merge_patch(&mut obj, &patch_doc);
                        obj
                    }
                    "application/json-patch+json" => {
                        patch::json_patch(&obj, &patch_doc).map_err(|e| patch_error(t, name, e))?
                    }
                    "application/strategic-merge-patch+json" if t.rt.builtin => {
                        patch::strategic_merge_patch(&obj, &patch_doc, &t.rt.kind)
                            .map_err(|e| patch_error(t, name, e))?
                    }
                    _ => {
                        return Err(ApiError::unsupported_media_type(format!(
                            "the body of the request was in an unknown format - accepted media types include: \
                             application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                            if t.rt.builtin {
                                ", application/strategic-merge-patch+json"
                            } else {
                                ""
                            }
                        )));
                    }
                };
                let mut patched = patched;
                check_body(t, &mut patched, Some(name))?;
                if let Some(rv) = patched
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    && rv != live.revision.to_string()
                {
                    return Err(ApiError::conflict(
                        &t.resource(),
                        name,
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ));
                }
                let mut new = carry_over(t, &live.object, patched);
                patch::record_update(Some(&live.object), &mut new, manager, &at);
                (new, StatusCode::OK)
            }
        };
        let live = old.expect("handled above");
        let mut new = if apply {
            carry_over(t, &live.object, new)
        } else {
            new
        };
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if dry_run {
            return Ok(ok_json(code, &with_rv(new, live.revision)));
        }
        match commit(state, t, name, live.revision, new, code).await {
            Err(e) if e.reason == "Conflict" => continue,
            r => return r,
        }
    }
    Err(ApiError::conflict(
        &t.resource(),
        name,
        "the object kept changing; try again",
    ))
}

async fn delete(state: &State, t: &Target, name: &str, opts: &Value, dry_run: bool) -> Reply {
    let old = load(state, t, name).await?;
    let obj = with_rv(old.object.clone(), old.revision);
    if let Some(rv) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        && rv != old.revision.to_string()
    {
        return Err(ApiError::conflict(
            &t.resource(),
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                old.revision
            ),
        ));
    }
    if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
        && Some(uid) != obj.pointer("/metadata/uid").and_then(Value::as_str)
    {
        return Err(ApiError::conflict(
            &t.resource(),
            name,
            "Precondition failed: UID mismatch",
        ));
    }
    if dry_run {
        return Ok(ok_json(StatusCode::OK, &obj));
    }
    let has_finalizers = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        // Marked, not removed: whoever owns a finalizer removes it, and the
        // update that removes the last one deletes the object.
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(ok_json(StatusCode::OK, &obj));
        }
        let mut marked = old.object.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if t.rt.kind == "Namespace" {
            marked["status"]["phase"] = json!("Terminating");
        }
        return commit(state, t, name, old.revision, marked, StatusCode::OK).await;
    }
    if t.rt.kind == "Namespace" {
        // No namespace controller: its contents go now, then it does.
        for rt in state.types().iter().filter(|rt| rt.namespaced) {
            state
                .store
                .delete_prefix(&state.store.prefix(rt, Some(name)))
                .await?;
        }
    }
    let key = state.store.key(&t.rt, t.namespace.as_deref(), name);
    let rev = state.store.delete(&key, old.revision).await?.ok_or_else(|| {
        ApiError::conflict(&t.resource(), name, "the object has been modified; please apply your changes to the latest version and try again")
    })?;
    after_delete(state, t, &obj).await?;
    Ok(ok_json(StatusCode::OK, &with_rv(obj, rev)))
}

/// A deleted CRD takes its types and their objects with it.
async fn after_delete(state: &State, t: &Target, obj: &Value) -> Result<(), ApiError> {
    if t.rt.kind == "CustomResourceDefinition" {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        for rt in super::crd_types(obj) {
            state
                .store
                .delete_prefix(&state.store.prefix(&rt, None))
                .await?;
        }
        state.unregister_crd(name);
    }
    Ok(())
}

async fn delete_collection(
    state: &State,
    t: &Target,
    q: &BTreeMap<String, String>,
    dry_run: bool,
) -> Reply {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
    let prefix = state.store.prefix(&t.rt, t.namespace.as_deref());
    let page = state.store.list(&prefix, "", 0, 0).await?;
    let mut items = Vec::new();
    for s in page.items {
        if labels.matches(&s.object) && fields.matches(&s.object) {
            let name = s
                .object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let r = delete(state, t, &name, &json!({}), dry_run).await;
            if r.is_ok() {
                items.push(with_rv(s.object, s.revision));
            }
        }
    }
    Ok(ok_json(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(),
                "metadata": {"resourceVersion": page.revision.to_string()}, "items": items}),
    ))
}

/// A continue token: the revision of the first page and the next key.
fn encode_continue(rev: i64, next: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": rev, "start": next}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::bad_request("continue key is not valid: the token was not issued by this server")
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rv"].as_i64().ok_or_else(bad)?,
        v["start"].as_str().ok_or_else(bad)?.to_string(),
    ))
}

async fn list(state: &State, t: &Target, q: &BTreeMap<String, String>) -> Reply {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
    let limit: i64 = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
        .max(0);
    let prefix = state.store.prefix(&t.rt, t.namespace.as_deref());
    // A continue token fixes the revision; so does `resourceVersionMatch=Exact`
    // (the list as it was then). Otherwise a list is of now, which satisfies
    // `resourceVersion=0` and `NotOlderThan`.
    let exact = match (q.get("resourceVersion"), q.get("resourceVersionMatch")) {
        (Some(rv), Some(m)) if m == "Exact" => {
            rv.parse::<i64>().ok().filter(|rv| *rv > 0).ok_or_else(|| {
                ApiError::bad_request(format!("resourceVersion {rv:?} is not a version"))
            })?
        }
        _ => 0,
    };
    let (mut at, mut from) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => decode_continue(c)?,
        None => (exact, String::new()),
    };
    if !from.is_empty() && !from.starts_with(&prefix) {
        return Err(ApiError::bad_request(
            "continue key does not belong to this list",
        ));
    }
    let mut items = Vec::new();
    let mut next = None;
    loop {
        let want = if limit > 0 {
            limit - items.len() as i64
        } else {
            0
        };
        let page = state.store.list(&prefix, &from, at, want).await?;
        if at == 0 {
            at = page.revision;
        }
        let last = page.items.last().map(|s| s.key.clone());
        for s in page.items {
            if labels.matches(&s.object) && fields.matches(&s.object) {
                let mut o = with_rv(s.object, s.revision);
                if t.rt.builtin
                    && let Some(m) = o.as_object_mut()
                {
                    // Items of a built-in list carry no apiVersion and kind.
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                items.push(o);
            }
        }
        match last {
            Some(k) if page.more => {
                from = format!("{k}\u{0}");
                if limit > 0 && items.len() as i64 >= limit {
                    next = Some(from.clone());
                    break;
                }
            }
            _ => break,
        }
    }
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if let Some(n) = next {
        metadata["continue"] = json!(encode_continue(at, &n));
    }
    Ok(ok_json(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(),
                "metadata": metadata, "items": items}),
    ))
}

/// One line of a watch stream.
fn event(kind: &str, object: Value) -> String {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    s
}

async fn watch(state: &Arc<State>, t: &Target, q: &BTreeMap<String, String>) -> Reply {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let rv: i64 = q
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let prefix = state.store.prefix(&t.rt, t.namespace.as_deref());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let (state, rt) = (state.clone(), t.rt.clone());
    let matches = move |o: &Value| labels.matches(o) && fields.matches(o);
    let kind = rt.kind.clone();
    let api_version = rt.api_version();
    tokio::spawn(async move {
        let bookmark = |rev: i64, end: bool| {
            let mut md = json!({"resourceVersion": rev.to_string()});
            if end {
                md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event(
                "BOOKMARK",
                json!({"kind": kind, "apiVersion": api_version, "metadata": md}),
            )
        };
        // Without a version (or with "0", or asked to), the current objects
        // come first as ADDED; then changes after them.
        let mut start = rv;
        if rv == 0 || initial {
            let Ok(page) = state.store.list(&prefix, "", 0, 0).await else {
                return;
            };
            for s in page.items {
                if matches(&s.object) {
                    let line = event("ADDED", with_rv(s.object, s.revision));
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
            start = page.revision;
            if initial && tx.send(Ok(bookmark(start, true))).await.is_err() {
                return;
            }
        }
        let mut client = state.store.client();
        let opts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(start + 1)
            .with_prev_key();
        let Ok(mut stream) = client.watch(prefix.as_str(), Some(opts)).await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last = start;
        loop {
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick, if bookmarks => {
                    if tx.send(Ok(bookmark(last, false))).await.is_err() { return; }
                }
                msg = stream.message() => {
                    let Ok(Some(resp)) = msg else { return };
                    // Asked for history etcd compacted away: 410, and the
                    // client lists again.
                    if resp.compact_revision() > 0 {
                        let e = ApiError::gone(format!(
                            "too old resource version: {start} ({})", resp.compact_revision()
                        ));
                        let _ = tx.send(Ok(event("ERROR", e.status()))).await;
                        return;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let (kind, obj) = match ev.event_type() {
                            etcd_client::EventType::Put => {
                                let Ok(o) = serde_json::from_slice::<Value>(kv.value()) else { continue };
                                let k = if kv.create_revision() == kv.mod_revision() { "ADDED" } else { "MODIFIED" };
                                (k, o)
                            }
                            etcd_client::EventType::Delete => {
                                let Some(Ok(o)) = ev.prev_kv().map(|p| serde_json::from_slice::<Value>(p.value())) else { continue };
                                ("DELETED", o)
                            }
                        };
                        last = kv.mod_revision();
                        if matches(&obj) && tx.send(Ok(event(kind, with_rv(obj, kv.mod_revision())))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .expect("a valid response"))
}
