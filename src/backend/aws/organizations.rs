//! The accounts of an AWS organization (`[organization]`): `ListAccounts` with the sidecar's
//! own identity, which must be the management account's or a delegated administrator's.

use aws_sdk_organizations::types::{AccountState, AccountStatus};

use super::errors::classify;
use crate::{backend::BackendError, domain::is_account_id, metrics::Metrics};

/// At most this many pages of `ListAccounts` (20 accounts each by default): a listing that
/// never ends is refused rather than followed forever.
const MAX_PAGES: usize = 10_000;

/// Lists the organization's accounts.
#[derive(Clone)]
pub struct OrganizationAccounts {
    client: aws_sdk_organizations::Client,
    metrics: Metrics,
}

impl OrganizationAccounts {
    pub(super) fn new(client: aws_sdk_organizations::Client, metrics: Metrics) -> Self {
        OrganizationAccounts { client, metrics }
    }

    /// The ids of the organization's active accounts, each once, in the order listed. A
    /// suspended, closing or closed account has no Inspector to manage.
    pub async fn list(&self) -> Result<Vec<String>, BackendError> {
        let answer = self.read().await;
        self.metrics.count_backend(
            "list_organization_accounts",
            answer.as_ref().map_or_else(BackendError::class, |_| "ok"),
        );
        answer
    }

    async fn read(&self) -> Result<Vec<String>, BackendError> {
        let mut pages = self.client.list_accounts().into_paginator().send();
        let mut accounts: Vec<String> = Vec::new();
        for _ in 0..MAX_PAGES {
            let Some(page) = pages.next().await else {
                return Ok(accounts);
            };
            // Classifying logs AWS's own words.
            let page = page.map_err(|error| classify("ListAccounts", error))?;
            for account in page.accounts() {
                // `State` replaces the deprecated `Status`; either says ACTIVE.
                #[allow(deprecated)]
                let active = match account.state() {
                    Some(state) => *state == AccountState::Active,
                    None => account.status() == Some(&AccountStatus::Active),
                };
                let Some(id) = account.id().filter(|id| is_account_id(id)) else {
                    continue;
                };
                if active && !accounts.iter().any(|a| a == id) {
                    accounts.push(id.to_owned());
                }
            }
        }
        Err(BackendError::internal(format!(
            "ListAccounts answered more than {MAX_PAGES} pages"
        )))
    }
}
