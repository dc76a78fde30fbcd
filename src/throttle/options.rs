//! What the request budget of one storage account allows: the throttle owns this type;
//! `config` builds it from `[accounts.NAME.throttle]`.

/// What one replica may ask of one storage account. Defaults are Azure's scale targets for a
/// standard (general-purpose v2) account and a standard page blob:
/// - 20,000 requests/s per account,
///   <https://learn.microsoft.com/azure/storage/common/scalability-targets-standard-account>;
/// - 25 Gbps ingress (≈ 2,980 MiB/s), the smallest regional ingress target of that page;
/// - 500 requests/s and 60 MiB/s per page blob,
///   <https://learn.microsoft.com/azure/storage/blobs/scalability-targets>.
///
/// Premium page-blob accounts allow more per blob (by disk tier); raise the blob fields there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// `false`: no budget and no adaptive concurrency; only the SDK's retries.
    pub enabled: bool,
    pub max_requests_per_second: u32,
    pub max_mib_per_second: u32,
    /// Per blob (base blob and its snapshots count as one).
    pub blob_max_requests_per_second: u32,
    pub blob_max_mib_per_second: u32,
    /// Learn lower limits than these from the service's throttled answers, per blob and per
    /// account (`throttle::learn`; docs/scaling.md).
    pub learn: bool,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            max_requests_per_second: 20_000,
            max_mib_per_second: 2_980,
            blob_max_requests_per_second: 500,
            blob_max_mib_per_second: 60,
            learn: true,
        }
    }
}
