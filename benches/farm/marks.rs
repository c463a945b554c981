//! Section 7b: what keeping a segmented job's progress in order costs.
//!
//! Every progress event of a segmented job's parts goes through the job's
//! mark on the broker ([`Broker::publish_in_order`]: a `basic.get` of the
//! mark, then one transaction with the event, the raised mark and the
//! ack). This section times that against the plain publish of a whole
//! job's event (`publish_progress`, not confirmed), on one connection, and
//! then has P connections (workers) publish events of the same job back
//! to back for a few seconds: how many events a second one job's mark
//! lets through, and how many offers found it held for every try
//! (skipped). A worker sends at most four events a second per part (at
//! least one), so P workers that each send one event a second need P
//! events a second from the job's mark.

use super::*;

use transcode_worker::broker::{Broker, InOrder};

/// One publisher's figures.
#[derive(Default)]
struct Offered {
    published: usize,
    busy: usize,
}

/// Offers events of `job` in order on `broker` until `until`.
async fn offer_until(broker: &Broker, job: &str, worker: &str, until: Instant) -> Offered {
    let mut offered = Offered::default();
    let mut percent = 5.0;
    while Instant::now() < until {
        percent += 0.001;
        let mut event = Progress::new(job, worker, 1, Phase::Transcoding, percent);
        match broker.publish_in_order(&mut event, false).await {
            Ok(InOrder::Published) => offered.published += 1,
            Ok(InOrder::Busy) => offered.busy += 1,
            Ok(InOrder::NoMark) => panic!("the mark of {job} is gone"),
            Err(e) => panic!("publishing in order: {e}"),
        }
    }
    offered
}

pub(super) async fn marks(opts: &Opts) -> String {
    let farm = Farm::s3(&[]).await;
    let connect = |name: String| {
        let settings = farm.settings.clone();
        async move {
            Broker::connect(&settings, &name)
                .await
                .expect("a broker connection")
        }
    };
    let one = connect("bench-marks".into()).await;
    let job = "bench-marks";
    one.start_mark(job, 0.0, Duration::from_secs(3600))
        .await
        .expect("the mark");
    let n = if opts.smoke { 50 } else { 2000 };
    let time_each = |in_order: bool| {
        let one = &one;
        async move {
            let mut times = Vec::with_capacity(n);
            for i in 0..n {
                let mut event =
                    Progress::new(job, "bench", 1, Phase::Transcoding, 5.0 + i as f64 * 1e-3);
                let started = Instant::now();
                if in_order {
                    let done = one.publish_in_order(&mut event, false).await;
                    assert_eq!(done.expect("publish in order"), InOrder::Published);
                } else {
                    one.publish_progress(&event, false).await.expect("publish");
                }
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            (median(times.clone()), times[times.len() * 99 / 100])
        }
    };
    let (plain_med, plain_p99) = time_each(false).await;
    let (mark_med, mark_p99) = time_each(true).await;

    let window = Duration::from_secs(if opts.smoke { 1 } else { 5 });
    let counts: &[usize] = if opts.smoke { &[2] } else { &[1, 2, 8, 32] };
    let mut rows = String::new();
    for &p in counts {
        let mut brokers = Vec::with_capacity(p);
        for i in 0..p {
            brokers.push(Arc::new(connect(format!("bench-marks-{i}")).await));
        }
        let until = Instant::now() + window;
        let tasks: Vec<_> = brokers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let b = b.clone();
                tokio::spawn(async move { offer_until(&b, job, &format!("w{i}"), until).await })
            })
            .collect();
        let mut total = Offered::default();
        for t in tasks {
            let o = t.await.expect("a publisher");
            total.published += o.published;
            total.busy += o.busy;
        }
        for b in brokers {
            b.close().await;
        }
        let secs = window.as_secs_f64();
        writeln!(
            rows,
            "| {p} | {:.0} | {:.1} | {} |",
            total.published as f64 / secs,
            total.published as f64 / secs / p as f64,
            total.busy,
        )
        .unwrap();
    }
    one.remove_mark(job).await.expect("the mark removed");
    one.close().await;

    format!(
        "\n## 7b. Progress marks: a segmented job's events in order\n\n\
         | one connection, {n} events one after another | per event, median | 99th percentile |\n\
         |---|---|---|\n\
         | plain publish (a whole job's event, not confirmed) | {plain_med:.2} ms | {plain_p99:.2} ms |\n\
         | in order through the job's mark (get, publish, put back, ack, commit) | {mark_med:.2} ms | {mark_p99:.2} ms |\n\n\
         Several connections (workers) offering events of one job back to back for {} s each:\n\n\
         | connections | events a second through the mark, all together | per connection | offers skipped (mark held for all 20 tries) |\n\
         |---|---|---|---|\n{rows}\n\
         RabbitMQ on loopback (the farm's own node), the progress exchange bound to the farm's \
         `transcoding_progress` quorum queue. A worker sends one to four events a second per part, \
         so one job's mark serves as many workers at once as the second table's events a second \
         allow, at one event a second each; beyond that, intermediate events are skipped (the \
         encoding is not slowed: the pipeline runs in its own process).\n",
        window.as_secs()
    )
}
