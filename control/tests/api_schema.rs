//! The schema the API server merges and applies by (`control/src/apiserver/schema/k8s.json`) is what
//! Kubernetes' own definitions of the built-in types say, as the pinned PyPI package carries
//! them (scripts/setup unpacks it; scripts/gen-api-schema makes the schema from it).

use std::process::Command;

#[test]
fn the_embedded_schema_is_generated_from_kubernetes_definitions() {
    let definitions = std::env::var("KEELSON_K8S_DEFINITIONS")
        .expect("KEELSON_K8S_DEFINITIONS names Kubernetes' definitions (scripts/test sets it after scripts/setup)");
    assert!(std::path::Path::new(&definitions).is_file(), "{definitions} is missing: run scripts/setup");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gen-api-schema");
    let out = Command::new("python3").arg(script).args(["--check", &definitions]).output().expect("python3 runs");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
