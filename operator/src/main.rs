//! `shoal-operator`: placeholder until the controller exists.
//!
//! The CRD types and planners live in the library (`shoal_operator::{crd, plan}`); the
//! controller needs the node's admin gRPC service, which is not built yet. Exiting non-zero
//! keeps a Deployment of this binary from looking healthy.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "shoal-operator {}: the controller is not implemented yet; \
         only the CRDs (crdgen) and the planners exist",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
