//! The method table: read from the `(inspectorkeyd.v1.access)` option on every RPC of the
//! package and the `served_services` of access.proto, and written out as Rust that
//! src/rpc.rs includes. Used by build.rs, and by tests/method_table.rs to show that an RPC
//! without the option is refused.

use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, DynamicMessage, Value};

pub const PACKAGE: &str = "inspectorkeyd.v1";

/// The package's proto files, relative to the crate.
pub const PROTOS: &[&str] = &[
    "proto/inspectorkeyd/v1/access.proto",
    "proto/inspectorkeyd/v1/types.proto",
    "proto/inspectorkeyd/v1/code_snippet.proto",
    "proto/inspectorkeyd/v1/verification.proto",
    "proto/inspectorkeyd/v1/encryption_key.proto",
    "proto/inspectorkeyd/v1/local_kms.proto",
    "proto/inspectorkeyd/v1/local_code_scanning.proto",
];

pub type Error = Box<dyn std::error::Error>;

/// One row of the table: a method's path and what calling it takes.
pub struct Row {
    path: String,
    method: String,
    role: &'static str,
    stored_key_role: &'static str,
    mutation: bool,
    secret_bearing: bool,
    cached_read: bool,
}

fn bool_field(access: &DynamicMessage, name: &str) -> bool {
    access
        .get_field_by_name(name)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

fn role_field(access: &DynamicMessage, name: &str) -> Option<&'static str> {
    match access
        .get_field_by_name(name)
        .and_then(|v| v.as_enum_number())
    {
        Some(1) => Some("None"),
        Some(2) => Some("Some(Role::ReadOnly)"),
        Some(3) => Some("Some(Role::CodeReader)"),
        Some(4) => Some("Some(Role::Admin)"),
        _ => None,
    }
}

fn row(path: String, method: String, access: &DynamicMessage) -> Result<Row, Error> {
    let role = role_field(access, "role")
        .ok_or_else(|| format!("{path}: the access option names no role"))?;
    let stored_key_role = role_field(access, "stored_key_role").unwrap_or("None");
    Ok(Row {
        path,
        method,
        role,
        stored_key_role,
        mutation: bool_field(access, "mutation"),
        secret_bearing: bool_field(access, "secret_bearing"),
        cached_read: bool_field(access, "cached_read"),
    })
}

fn message(value: &Value) -> Option<&DynamicMessage> {
    match value {
        Value::Message(message) => Some(message),
        _ => None,
    }
}

pub fn method_table(pool: &DescriptorPool) -> Result<Vec<Row>, Error> {
    let access = pool
        .get_extension_by_name(&format!("{PACKAGE}.access"))
        .ok_or("the access extension is not defined")?;
    let served = pool
        .get_extension_by_name(&format!("{PACKAGE}.served_services"))
        .ok_or("the served_services extension is not defined")?;
    let mut rows = Vec::new();
    for service in pool.services().filter(|s| s.package_name() == PACKAGE) {
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            if !options.has_extension(&access) {
                return Err(format!(
                    "{path} has no `option (access)`: declare the role it needs in proto/ (see access.proto)"
                )
                .into());
            }
            let value = options.get_extension(&access);
            let declared = message(&value).ok_or("access is not a message")?;
            rows.push(row(path, method.name().to_owned(), declared)?);
        }
    }
    for file in pool.files().filter(|f| f.package_name() == PACKAGE) {
        let options = file.options();
        if !options.has_extension(&served) {
            continue;
        }
        let value = options.get_extension(&served);
        for service in value.as_list().ok_or("served_services is not a list")? {
            let service = message(service).ok_or("a served service is not a message")?;
            let name = service
                .get_field_by_name("name")
                .and_then(|v| v.as_str().map(str::to_owned))
                .ok_or("a served service has no name")?;
            let declared = service.get_field_by_name("access");
            let declared = declared
                .as_deref()
                .and_then(message)
                .ok_or_else(|| format!("{name}: no access"))?;
            let methods = service
                .get_field_by_name("methods")
                .and_then(|v| {
                    v.as_list().map(|l| {
                        l.iter()
                            .filter_map(|m| m.as_str().map(str::to_owned))
                            .collect::<Vec<_>>()
                    })
                })
                .unwrap_or_default();
            for method in methods {
                rows.push(row(format!("/{name}/{method}"), method, declared)?);
            }
        }
    }
    Ok(rows)
}

pub fn generate(rows: &[Row]) -> Result<String, Error> {
    let cached: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].cached_read).collect();
    let [cached_read] = cached[..] else {
        return Err(format!(
            "exactly one RPC may be the cached read (cached_read: true); found {}",
            cached.len()
        )
        .into());
    };
    let mut code = String::from(
        "// Generated by build.rs from the `(inspectorkeyd.v1.access)` options in proto/.\n\n",
    );
    let _ = writeln!(
        code,
        "/// Every method the server serves.\npub static METHODS: [Method; {}] = [",
        rows.len()
    );
    for (index, row) in rows.iter().enumerate() {
        let _ = writeln!(
            code,
            "    Method {{ index: {index}, path: {:?}, name: {:?}, access: Access {{ role: {}, stored_key_role: {}, mutation: {}, secret_bearing: {}, cached_read: {} }} }},",
            row.path,
            row.method,
            row.role,
            row.stored_key_role,
            row.mutation,
            row.secret_bearing,
            row.cached_read
        );
    }
    code.push_str("];\n\n/// The position of `path` in [`METHODS`].\npub fn method_index(path: &str) -> Option<usize> {\n    match path {\n");
    for (index, row) in rows.iter().enumerate() {
        let _ = writeln!(code, "        {:?} => Some({index}),", row.path);
    }
    code.push_str("        _ => None,\n    }\n}\n\n");
    let _ = writeln!(
        code,
        "/// The hot cached read, whose span the service opens itself on a miss.\npub static CACHED_READ: &Method = &METHODS[{cached_read}];"
    );
    code.push_str(&path_constants(rows));
    Ok(code)
}

/// A module per service of the package with a constant per method holding its path
/// (`paths::encryption_key_service::GET_ENCRYPTION_KEY`), so code that names a method (the
/// AWS-protocol door) takes its path from the proto, and a renamed RPC does not build.
fn path_constants(rows: &[Row]) -> String {
    let prefix = format!("/{PACKAGE}.");
    let mut services: std::collections::BTreeMap<&str, Vec<&Row>> = Default::default();
    for row in rows {
        if let Some((service, _)) = row
            .path
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
        {
            services.entry(service).or_default().push(row);
        }
    }
    let mut code = String::from(
        "\n/// The path of every method of the package's services.\npub mod paths {\n",
    );
    for (service, rows) in services {
        let _ = writeln!(code, "    pub mod {} {{", snake_case(service));
        for row in rows {
            let _ = writeln!(
                code,
                "        pub const {}: &str = {:?};",
                snake_case(&row.method).to_uppercase(),
                row.path
            );
        }
        code.push_str("    }\n");
    }
    code.push_str("}\n");
    code
}

/// `EncryptionKeyService` as `encryption_key_service`.
fn snake_case(name: &str) -> String {
    let mut snake = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}
