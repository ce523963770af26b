//! Links the release binary with the sidecar's functions packed together (`sidecar.order`).
//!
//! The kernel maps a program's code 64 KiB around each page it runs, so a sidecar whose 1.3 MB
//! of functions lie scattered among the hub's, the supervisor's and the integrator's would hold
//! most of the binary; packed first, it holds little more than what it runs (BENCHMARKS.md,
//! sidecar memory). `scripts/sidecar-order` regenerates the list. Only where rustc links with
//! its own lld (x86_64 Linux, the default since Rust 1.90), in release builds; set
//! `AGENTCOM_SYMBOL_ORDER=off` when linking with another linker.

fn main() {
    println!("cargo:rerun-if-changed=sidecar.order");
    println!("cargo:rerun-if-env-changed=AGENTCOM_SYMBOL_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("AGENTCOM_SYMBOL_ORDER") == "off"
    {
        return;
    }
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("sidecar.order");
    println!("cargo:rustc-link-arg-bin=agentcom=-Wl,--symbol-ordering-file={}", order.display());
    // Names the binary no longer has (renamed functions) are skipped, not a failure.
    println!("cargo:rustc-link-arg-bin=agentcom=-Wl,--no-warn-symbol-ordering");
}
