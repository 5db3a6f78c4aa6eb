//! The store contract: what ingress and delivery rely on, run against every backend.
//! Each backend gets the same suite through `contract!`: the embedded SQLite store, a standalone
//! Redis and a 3-master Redis Cluster (real servers, started once per test binary; each test has
//! its own key prefix). Behaviour only several processes can show (a lease expiring and another
//! instance taking the job) runs on Redis through `instances!`, two stores on one server.
//!
//! The tests are in modules by topic; this file wires them to the backends (`contract!`,
//! `instances!`, `build_before!`), which `backends` opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accept;
mod backends;
mod build_before;
mod callbacks;
mod dead_letters;
mod history;
mod instances;
mod lanes;
mod leases;
mod redis_only;
mod sentinel;
mod sqlite_only;
mod support;

#[path = "../support/redis.rs"]
mod redis_server;

use backends::{
    cluster_urls, redis_cluster, redis_standalone, sqlite, standalone_urls, two_instances,
};

/// The suite for one backend: `mod $backend` with one test per contract function, each on a
/// fresh store from `$open` (the store and a guard that keeps its files alive).
macro_rules! contract {
    ($backend:ident, $open:expr) => {
        contract!(@suite $backend, $open,
            #[tokio::test] accept::insert_if_absent_is_the_dedupe,
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            accept::concurrent_resends_create_one_callback,
            #[tokio::test] leases::lease_returns_original_bytes_once,
            #[tokio::test] leases::record_reschedules_buries_and_removes,
            #[tokio::test] leases::purge_keeps_undelivered,
            #[tokio::test] accept::delivery_ids_are_never_reused,
            #[tokio::test] accept::ids_increase_and_survive_a_double,
            #[tokio::test] accept::kept_values_read_back_and_are_replaced,
            #[tokio::test] leases::release_returns_jobs_in_flight_to_the_queue,
            #[tokio::test] dead_letters::bury_unrouted_turns_orphaned_jobs_into_dead_letters,
            #[tokio::test] dead_letters::replay_dead_replays_letters_of_routed_targets_only,
            #[tokio::test] dead_letters::purge_dead_deletes_letters_by_id_and_by_filter,
            #[tokio::test] dead_letters::dead_letters_are_filtered_and_newest_first,
            #[tokio::test] leases::record_with_a_stale_token_is_not_applied,
            #[tokio::test] accept::accept_sent_twice_writes_once,
            #[tokio::test] accept::duplicate_sees_the_pending_answer,
            #[tokio::test] leases::outcome_sent_twice_at_once_applies_once,
            #[tokio::test] accept::a_resend_finds_its_first_copy_under_the_legacy_key,
            #[tokio::test] accept::callbacks_sharing_a_legacy_key_stay_apart,
            #[tokio::test] accept::the_authorizer_is_stored_beside_wechats_query,
            #[tokio::test] callbacks::a_callback_is_shown_with_the_jobs_it_still_holds,
            #[tokio::test] callbacks::a_callbacks_jobs_are_found_whatever_their_ids,
            #[tokio::test] callbacks::callbacks_are_listed_newest_first,
            #[tokio::test] callbacks::the_oldest_open_job_of_each_target_is_told,
            #[tokio::test] accept::the_trace_context_comes_back_with_each_lease,
            #[tokio::test] dead_letters::jobs_due_for_too_long_become_dead_letters,
            #[tokio::test] lanes::a_paced_targets_starts_are_reserved_one_interval_apart,
            #[tokio::test] lanes::a_backfill_queues_each_callback_of_a_window_once,
            #[tokio::test] lanes::arrivals_of_one_millisecond_come_page_by_page_in_id_order,
            #[tokio::test] lanes::a_lane_goes_one_job_at_a_time_in_order,
            #[tokio::test] lanes::a_lane_ordered_job_leased_at_accept_starts_only_in_an_empty_lane,
            #[tokio::test] lanes::a_dead_letter_releases_its_lane_and_rejoins_it_at_the_end,
            #[tokio::test] lanes::a_released_first_keeps_its_place_and_unrouted_lanes_are_buried,
            #[tokio::test] history::history_pages_back_newest_first_and_filters,
            #[tokio::test] history::history_searches_by_instance_and_target_state,
            #[tokio::test] history::minute_counts_of_instances_add_up,
        );
    };
    (@suite $backend:ident, $open:expr, $(#[$runtime:meta] $module:ident::$test:ident,)*) => {
        mod $backend {
            use super::*;
            $(
                #[$runtime]
                async fn $test() {
                    let (store, _guard) = $open;
                    super::$module::$test(store).await;
                }
            )*
        }
    };
}

contract!(sqlite, sqlite());
contract!(redis_standalone, redis_standalone().await);
contract!(redis_cluster, redis_cluster().await);

/// Tests of several instances for one Redis deployment: `mod $backend` with one test each.
macro_rules! instances {
    ($backend:ident, $urls:expr, $cluster:expr) => {
        mod $backend {
            use super::*;
            instances!(@test $urls, $cluster, instances::lease_expiry_hands_the_job_to_another_instance);
            instances!(@test $urls, $cluster, instances::renew_keeps_a_lease);
            instances!(@test $urls, $cluster, instances::jobs_taken_at_accept_renew_release_and_outlive_their_holder);
            instances!(@test $urls, $cluster, instances::every_instance_sees_the_whole_deployment);
            instances!(@test $urls, $cluster, instances::instances_never_share_an_id);
            instances!(@test $urls, $cluster, instances::an_older_instance_finds_a_callback_of_this_build_under_its_key);
            instances!(@test $urls, $cluster, instances::instances_share_a_targets_pace);
            instances!(@test $urls, $cluster, lanes::two_instances_never_hold_two_jobs_of_one_lane);
            instances!(@test $urls, $cluster, lanes::a_lanes_first_whose_lease_expired_goes_first);
        }
    };
    (@test $urls:expr, $cluster:expr, $module:ident::$test:ident) => {
        #[tokio::test]
        async fn $test() {
            let (a, b) = two_instances($urls, $cluster).await;
            super::$module::$test(a, b).await;
        }
    };
}

instances!(redis_standalone_instances, standalone_urls(), false);
instances!(redis_cluster_instances, cluster_urls(), true);

/// The tests of the build before's forms on Redis: `mod $backend` with one test each.
macro_rules! build_before {
    ($backend:ident, $urls:expr, $cluster:expr) => {
        mod $backend {
            #[tokio::test]
            async fn a_callback_stored_by_the_build_before_is_delivered() {
                super::build_before::redis_a_callback_stored_by_the_build_before_is_delivered(
                    $urls, $cluster,
                )
                .await;
            }

            #[tokio::test]
            async fn the_build_before_reads_a_callback_of_this_build() {
                super::build_before::redis_the_build_before_reads_a_callback_of_this_build(
                    $urls, $cluster,
                )
                .await;
            }
        }
    };
}

build_before!(
    redis_standalone_build_before,
    super::standalone_urls(),
    false
);
build_before!(redis_cluster_build_before, super::cluster_urls(), true);
