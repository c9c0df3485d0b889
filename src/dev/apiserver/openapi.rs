//! The OpenAPI documents, only as much of them as `kubectl` needs.
//!
//! Measured with kubectl v1.32.4 against a prototype server that logged
//! every request (2026-11-27). `kubectl apply`, client-side or
//! `--server-side`, validates by default (`--validate=strict`). It needs the
//! following from OpenAPI, and nothing more:
//!
//! 1. **Does the server validate fields itself?** kubectl decides this from
//!    OpenAPI v3. It fetches `GET /openapi/v3` (the [`index`]), then
//!    `GET /openapi/v3/<key>` with `Accept: application/json` for each group
//!    version in the file. The URL comes from the entry's `serverRelativeURL`,
//!    so an entry without one is useless. kubectl fetches each document once
//!    per run and keeps it in memory.
//!    - In the document ([`group_version`]), kubectl looks for a `patch`
//!      operation whose `x-kubernetes-group-version-kind` is the object's
//!      GVK. That operation must list a parameter
//!      `{"name": "fieldValidation", "in": "query"}`
//!      (client-go `resource.supportsQueryParamV3`).
//!    - When it is found, kubectl sends `fieldValidation=Strict` on its POST
//!      and PATCH requests and checks nothing itself.
//!    - When the group version is in the index but has no such operation for
//!      the kind, apply fails: "Path not found for GVK".
//!    - When the operation exists without the parameter, kubectl falls back
//!      to validating on the client (see 3).
//!    - Path keys must start with `/`. The Go parser drops other keys.
//!    - `openapi`, `info`, the parameter's `schema`, `responses` and
//!      `components` are all optional to kubectl. `openapi` and `info` are
//!      kept only so that the result is a valid OpenAPI document.
//! 2. **A group version missing from the index.** This happens to a custom
//!    resource whose definition is not created yet, or was created after
//!    kubectl read the index. kubectl then lists
//!    `GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions`.
//!    - If a definition for the kind exists, the `Namespace` operation in
//!      `api/v1` stands in for it, so `api/v1` must always list Namespace.
//!    - Otherwise kubectl validates on the client (see 3).
//!    - Custom group versions are listed in the index anyway, as a real
//!      server does. Then the definition's group version is checked directly.
//! 3. **Validating on the client** uses OpenAPI **v2**, and only as protobuf:
//!    `GET /openapi/v2` with
//!    `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`.
//!    It is always done for a `kind: List` file, like the output of
//!    `kubectl get -o json`, and for a resource of a not-yet-created
//!    definition.
//!    - With a 404, such an apply fails: "error validating data: the server
//!      could not find the requested resource".
//!    - Serve [`v2`] instead: a protobuf `openapi_v2.Document` holding only
//!      `swagger: "2.0"`. It has no definitions, so kubectl finds no schema
//!      and skips validation, as a real server does for unknown kinds.
//!    - Send the content type [`V2_CONTENT_TYPE`], `application/octet-stream`,
//!      as the real server does. With the protobuf media type, which
//!      contains `@`, client-go fails with "mime: unexpected content after
//!      media subtype".
//! 4. **Re-applies on the client side** compute a three-way patch.
//!    - For built-in kinds kubectl sends `application/strategic-merge-patch+json`.
//!      It takes patch metadata (merge keys, strategies) from OpenAPI v3 only
//!      when the `patch` operation's `requestBody.content` offers that media
//!      type, and then also needs complete schemas under `components.schemas`.
//!    - Our documents have no `requestBody`. kubectl then tries v2 (no
//!      definitions there either) and uses its compiled-in Go types, which
//!      are right for every built-in kind served here. The patches carry
//!      `$setElementOrder/...` directives and list items reduced to their
//!      merge key, so the server must apply strategic merge patches properly.
//!    - For custom resources (kinds not compiled into kubectl) it sends
//!      `application/merge-patch+json`.
//!
//! Not needed from OpenAPI: `kubectl get`, `patch`, `delete`, `api-resources`
//! (discovery only) and `apply --server-side` beyond point 1.
//! `kubectl explain` does not work: it needs full schemas under
//! `components.schemas`.
//!
//! kubectl itself, not the server, makes one case fail: applying a
//! CustomResourceDefinition and resources of it from **one** file.
//! - kubectl maps every object to a resource before it applies the first one.
//! - So the definition is created, and each of its resources fails with
//!   "resource mapping not found ... ensure CRDs are installed first"
//!   (exit 1), exactly as against a real cluster.
//! - Applying the file a second time succeeds.
//!
//! Entries carry no `?hash=`. A real server marks hashed documents
//! `Cache-Control: immutable`, so kubectl could keep stale ones in its
//! disk cache after a definition changes.

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

/// The content type to send with [`v2`]. The real server sends it too;
/// client-go cannot parse the protobuf media type in a response.
pub const V2_CONTENT_TYPE: &str = "application/octet-stream";

/// The body of `GET /openapi/v2`: a protobuf `openapi_v2.Document` whose only
/// field is `swagger` (field 1, string) = `"2.0"`. It has no definitions, so
/// kubectl's client-side validation and patch lookup find nothing and move on.
/// Serve it whatever the `Accept` header says: kubectl only asks for protobuf.
pub fn v2() -> &'static [u8] {
    b"\x0a\x032.0"
}

/// The key of a type's group version in the index: `api/v1`,
/// `apis/apps/v1`. This is the path after `/openapi/v3/`.
fn gv_key(t: &ResourceType) -> String {
    t.gv_path().trim_start_matches('/').to_string()
}

/// The `/openapi/v3` index: one entry per served group version.
pub fn index(types: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for t in types {
        let key = gv_key(t);
        if !paths.contains_key(&key) {
            let url = format!("/openapi/v3/{key}");
            paths.insert(key, json!({ "serverRelativeURL": url }));
        }
    }
    json!({ "paths": paths })
}

/// The document of one group version (`api/v1`, `apis/apps/v1`,
/// `apis/example.com/v1`), or None when not served. Leading or trailing
/// slashes and a query string (`?hash=…`) are ignored.
pub fn group_version(path: &str, types: &[ResourceType]) -> Option<Value> {
    let key = path.split('?').next().unwrap_or("").trim_matches('/');
    let mut paths = Map::new();
    for t in types.iter().filter(|t| gv_key(t) == key) {
        paths.insert(item_path(t), json!({ "patch": patch_operation(t) }));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "drctl dev apiserver", "version": "v1.32.0" },
        "paths": paths,
    }))
}

/// The path of one object of the type, as the real server's document names
/// it: `/apis/apps/v1/namespaces/{namespace}/deployments/{name}`.
fn item_path(t: &ResourceType) -> String {
    if t.namespaced {
        format!(
            "{}/namespaces/{{namespace}}/{}/{{name}}",
            t.gv_path(),
            t.plural
        )
    } else {
        format!("{}/{}/{{name}}", t.gv_path(), t.plural)
    }
}

/// The PATCH operation: the kind it is for, and that it takes
/// `fieldValidation`. It has no `requestBody` on purpose (module docs, 4).
fn patch_operation(t: &ResourceType) -> Value {
    json!({
        "x-kubernetes-group-version-kind": {
            "group": t.group,
            "version": t.version,
            "kind": t.kind,
        },
        "parameters": [
            {
                "name": "fieldValidation",
                "in": "query",
                "schema": { "type": "string" },
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::super::resources::builtins;
    use super::*;

    fn widget(version: &str) -> ResourceType {
        ResourceType {
            group: "example.com".into(),
            version: version.into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            kind: "Widget".into(),
            namespaced: true,
            short_names: vec!["wd".into()],
            status: false,
            builtin: false,
        }
    }

    fn all_types() -> Vec<ResourceType> {
        let mut ts = builtins();
        ts.push(widget("v1"));
        ts.push(widget("v2"));
        ts
    }

    /// kubectl's own test (client-go `resource.supportsQueryParamV3`): the
    /// first PATCH operation for the GVK must list the query parameter.
    fn kubectl_supports_field_validation(
        doc: &Value,
        group: &str,
        version: &str,
        kind: &str,
    ) -> bool {
        let paths = doc["paths"].as_object().expect("paths");
        for (key, item) in paths {
            assert!(key.starts_with('/'), "kubectl ignores the path key {key}");
            let Some(op) = item.get("patch") else {
                continue;
            };
            let gvk = &op["x-kubernetes-group-version-kind"];
            if gvk["group"].as_str().unwrap_or("") != group
                || gvk["version"] != version
                || gvk["kind"] != kind
            {
                continue;
            }
            return op["parameters"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
            });
        }
        false
    }

    #[test]
    fn index_lists_each_group_version_once_with_its_url() {
        let idx = index(&all_types());
        let paths = idx["paths"].as_object().unwrap();
        assert_eq!(
            paths["api/v1"],
            json!({ "serverRelativeURL": "/openapi/v3/api/v1" })
        );
        assert_eq!(
            paths["apis/apps/v1"]["serverRelativeURL"],
            "/openapi/v3/apis/apps/v1"
        );
        assert!(paths.contains_key("apis/apiextensions.k8s.io/v1"));
        assert!(paths.contains_key("apis/example.com/v1"));
        assert!(paths.contains_key("apis/example.com/v2"));
        let mut keys: Vec<String> = all_types().iter().map(gv_key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(paths.len(), keys.len());
    }

    #[test]
    fn every_index_entry_resolves_to_a_document() {
        let types = all_types();
        let idx = index(&types);
        for (key, entry) in idx["paths"].as_object().unwrap() {
            let url = entry["serverRelativeURL"].as_str().unwrap();
            let rest = url.strip_prefix("/openapi/v3/").unwrap();
            assert_eq!(rest, key);
            assert!(group_version(rest, &types).is_some(), "{key}");
        }
    }

    #[test]
    fn every_served_kind_declares_field_validation() {
        let types = all_types();
        for t in &types {
            let doc = group_version(&gv_key(t), &types).unwrap();
            assert!(
                kubectl_supports_field_validation(&doc, &t.group, &t.version, &t.kind),
                "{} {}",
                t.api_version(),
                t.kind
            );
        }
    }

    #[test]
    fn core_document_has_namespace_for_the_custom_resource_fallback() {
        let doc = group_version("api/v1", &builtins()).unwrap();
        assert!(kubectl_supports_field_validation(
            &doc,
            "",
            "v1",
            "Namespace"
        ));
    }

    #[test]
    fn paths_follow_scope() {
        let types = all_types();
        let core = group_version("api/v1", &types).unwrap();
        assert!(
            core["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"].is_object()
        );
        assert!(core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        let crd = group_version("apis/apiextensions.k8s.io/v1", &types).unwrap();
        assert!(
            crd["paths"]["/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"]["patch"]
                .is_object()
        );
        let cr = group_version("apis/example.com/v1", &types).unwrap();
        let op =
            &cr["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
        assert_eq!(
            op["x-kubernetes-group-version-kind"],
            json!({ "group": "example.com", "version": "v1", "kind": "Widget" })
        );
    }

    #[test]
    fn documents_hold_only_their_group_version() {
        let types = all_types();
        let apps = group_version("apis/apps/v1", &types).unwrap();
        for (key, item) in apps["paths"].as_object().unwrap() {
            assert!(key.starts_with("/apis/apps/v1/"), "{key}");
            assert_eq!(
                item["patch"]["x-kubernetes-group-version-kind"]["group"],
                "apps"
            );
        }
        let n = types.iter().filter(|t| t.group == "apps").count();
        assert_eq!(apps["paths"].as_object().unwrap().len(), n);
        let v2 = group_version("apis/example.com/v2", &types).unwrap();
        assert_eq!(v2["paths"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn no_request_body_so_kubectl_uses_its_compiled_in_patch_metadata() {
        let types = all_types();
        for t in &types {
            let doc = group_version(&gv_key(t), &types).unwrap();
            for item in doc["paths"].as_object().unwrap().values() {
                assert!(item["patch"].get("requestBody").is_none());
            }
        }
    }

    #[test]
    fn unknown_group_versions_are_not_served() {
        let types = builtins();
        assert_eq!(group_version("apis/example.com/v1", &types), None);
        assert_eq!(group_version("apis/apps/v2", &types), None);
        assert_eq!(group_version("api/v2", &types), None);
        assert_eq!(group_version("apis/apps", &types), None);
        assert_eq!(group_version("", &types), None);
        assert_eq!(group_version("apis", &types), None);
    }

    #[test]
    fn slashes_and_hash_queries_are_ignored() {
        let types = builtins();
        let plain = group_version("apis/apps/v1", &types).unwrap();
        assert_eq!(group_version("/apis/apps/v1/", &types).unwrap(), plain);
        assert_eq!(
            group_version("apis/apps/v1?hash=ABC", &types).unwrap(),
            plain
        );
    }

    #[test]
    fn custom_group_versions_come_and_go_with_their_types() {
        let mut types = builtins();
        assert!(index(&types)["paths"].get("apis/example.com/v1").is_none());
        types.push(widget("v1"));
        assert!(index(&types)["paths"].get("apis/example.com/v1").is_some());
    }

    #[test]
    fn v2_is_a_protobuf_document_with_only_swagger_2_0() {
        // Field 1, wire type 2 (length-delimited), length 3, "2.0".
        assert_eq!(v2(), &[0x0a, 0x03, b'2', b'.', b'0']);
        assert_eq!(V2_CONTENT_TYPE, "application/octet-stream");
    }
}
