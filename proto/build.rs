fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate so that only the Rust toolchain is needed to build.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure()
        // Raft log entries carry these requests; serde lets bincode encode them.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // Byte strings as one blob rather than a sequence of u8: large values cross the peer
        // network in time.
        .field_attribute("key", "#[serde(with = \"serde_bytes\")]")
        .field_attribute("value", "#[serde(with = \"serde_bytes\")]")
        .field_attribute("range_end", "#[serde(with = \"serde_bytes\")]")
        .compile_protos(&["proto/kv.proto", "proto/rpc.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
