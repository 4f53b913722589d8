//! The fleet: the desired state of the organization's keys, which key each managed account
//! and Region should use for each target, kept in a file under version control.

pub mod desired;
