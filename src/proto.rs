//! Generated protobuf and gRPC code for `inspectorkeyd.v1`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inspectorkeyd.v1");

/// Encoded descriptors of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inspectorkeyd_descriptor.bin"));

/// Full gRPC name of the encryption-key service, as health checks use it.
pub const ENCRYPTION_KEY_SERVICE: &str = "inspectorkeyd.v1.EncryptionKeyService";
