//! Generated protobuf types and gRPC stubs shared by `shoal-node` and `shoal-operator`.

/// Version 1 of Shoal's internal API.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("shoal.v1");
}
