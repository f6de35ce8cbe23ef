//! Compiles the `.proto` wire contract with protox (pure Rust; no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/outpost.proto", "proto/admin.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut config = prost_build::Config::new();
    // Admin results are printed as JSON by the admin tool.
    config.type_attribute(".outpost.admin", "#[derive(serde::Serialize)]");
    config.type_attribute(".outpost.admin", "#[serde(rename_all = \"snake_case\")]");
    // A hello carries the first sync (events included): boxed, so every Hello stays small.
    config.boxed(".outpost.v1.Hello.first_sync");
    config.compile_fds(fds)?;
    Ok(())
}
