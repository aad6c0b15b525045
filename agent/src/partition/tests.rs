use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// 1,000 rows over 10 classes, 100 each.
fn labels() -> Vec<u32> {
    (0..1000).map(|i| (i % 10) as u32).collect()
}

fn assert_covers_each_row_once(parts: &[Vec<usize>], n: usize) {
    let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
}

fn run(p: &dyn Partitioner, labels: &[u32], clients: usize, seed: u64) -> Vec<Vec<usize>> {
    p.partition(labels, clients, &mut StdRng::seed_from_u64(seed)).unwrap()
}

#[test]
fn iid_covers_every_row_once_evenly_and_is_seeded() {
    let labels = labels();
    let parts = run(&Iid, &labels[..997], 7, 1);
    assert_covers_each_row_once(&parts, 997);
    assert!(
        parts.iter().all(|p| p.len() == 142 || p.len() == 143),
        "{:?}",
        parts.iter().map(Vec::len)
    );
    assert_eq!(parts, run(&Iid, &labels[..997], 7, 1));
    assert_ne!(parts, run(&Iid, &labels[..997], 7, 2));
    assert!(matches!(
        Iid.partition(&labels, 0, &mut StdRng::seed_from_u64(0)),
        Err(PartitionError::NoClients)
    ));
    assert!(matches!(
        Iid.partition(&labels[..3], 4, &mut StdRng::seed_from_u64(0)),
        Err(PartitionError::TooFewSamples { .. })
    ));
}

#[test]
fn dirichlet_covers_every_row_once_and_is_seeded() {
    let labels = labels();
    let p = Dirichlet {
        alpha: 0.5,
        min_size: 10,
    };
    let parts = run(&p, &labels, 10, 7);
    assert_covers_each_row_once(&parts, labels.len());
    assert!(parts.iter().all(|p| p.len() >= 10));
    assert_eq!(parts, run(&p, &labels, 10, 7));
    assert_ne!(parts, run(&p, &labels, 10, 8));
}

/// Mean over clients of the share of the client's most common label.
fn dominance(parts: &[Vec<usize>], labels: &[u32]) -> f64 {
    let shares = parts.iter().filter(|p| !p.is_empty()).map(|p| {
        let mut counts = [0usize; 10];
        for &row in p {
            counts[labels[row] as usize] += 1;
        }
        *counts.iter().max().unwrap() as f64 / p.len() as f64
    });
    let n = parts.iter().filter(|p| !p.is_empty()).count() as f64;
    shares.sum::<f64>() / n
}

#[test]
fn small_alpha_skews_labels_and_large_alpha_does_not() {
    let labels = labels();
    let skewed = run(
        &Dirichlet {
            alpha: 0.05,
            min_size: 1,
        },
        &labels,
        10,
        3,
    );
    let mixed = run(
        &Dirichlet {
            alpha: 1000.0,
            min_size: 1,
        },
        &labels,
        10,
        3,
    );
    let iid = run(&Iid, &labels, 10, 3);
    assert_covers_each_row_once(&skewed, labels.len());
    assert!(dominance(&skewed, &labels) > 0.6, "{}", dominance(&skewed, &labels));
    assert!(dominance(&mixed, &labels) < 0.2, "{}", dominance(&mixed, &labels));
    assert!(dominance(&iid, &labels) < 0.25, "{}", dominance(&iid, &labels));
}

#[test]
fn dirichlet_rejects_bad_alpha_and_unreachable_min_size() {
    let labels = labels();
    let mut rng = StdRng::seed_from_u64(0);
    for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = Dirichlet { alpha, min_size: 1 }
            .partition(&labels, 2, &mut rng)
            .unwrap_err();
        assert!(matches!(err, PartitionError::InvalidAlpha(_)));
    }
    let err = Dirichlet {
        alpha: 0.5,
        min_size: 101,
    }
    .partition(&labels, 10, &mut rng)
    .unwrap_err();
    assert!(matches!(err, PartitionError::TooFewSamples { .. }));
    // 10 clients × 99 rows out of 1,000 is feasible only for a near-uniform draw.
    let err = Dirichlet {
        alpha: 0.01,
        min_size: 99,
    }
    .partition(&labels, 10, &mut rng)
    .unwrap_err();
    assert!(
        matches!(
            err,
            PartitionError::MinSizeUnreachable {
                attempts: DIRICHLET_MAX_ATTEMPTS,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn gamma_draws_have_the_right_mean_and_variance() {
    let mut rng = StdRng::seed_from_u64(11);
    for shape in [0.1, 0.5, 1.0, 3.0] {
        let n = 40_000;
        let draws: Vec<f64> = (0..n).map(|_| ln_gamma_sample(shape, &mut rng).exp()).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (mean - shape).abs() < 0.05 * shape.max(0.5),
            "shape {shape}: mean {mean}"
        );
        assert!((var - shape).abs() < 0.1 * shape.max(0.5), "shape {shape}: var {var}");
    }
    let shares = sample_dirichlet(0.001, 50, &mut rng);
    assert!(shares.iter().all(|s| s.is_finite()));
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

#[test]
fn spec_parses_the_accepted_forms() {
    assert_eq!("iid".parse::<PartitionSpec>().unwrap(), PartitionSpec::Iid);
    assert_eq!(
        "dirichlet:0.5".parse::<PartitionSpec>().unwrap(),
        PartitionSpec::Dirichlet(0.5)
    );
    assert_eq!(
        "file:data/x.json".parse::<PartitionSpec>().unwrap(),
        PartitionSpec::File(PathBuf::from("data/x.json"))
    );
    for bad in [
        "",
        "dirichlet",
        "dirichlet:",
        "dirichlet:-1",
        "dirichlet:nan",
        "file:",
        "zipf:2",
    ] {
        let err = bad.parse::<PartitionSpec>().unwrap_err();
        assert!(err.to_string().contains("dirichlet:ALPHA"), "{bad}: {err}");
    }
    for spec in ["iid", "dirichlet:0.1", "file:/a/b.json"] {
        assert_eq!(spec.parse::<PartitionSpec>().unwrap().to_string(), spec);
    }
    let json = serde_json::to_string(&PartitionSpec::Dirichlet(0.3)).unwrap();
    assert_eq!(json, "\"dirichlet:0.3\"");
    assert_eq!(
        serde_json::from_str::<PartitionSpec>(&json).unwrap(),
        PartitionSpec::Dirichlet(0.3)
    );
    assert!(serde_json::from_str::<PartitionSpec>("\"dirichlet:0\"").is_err());
}

const SMALL: &str = r#"{"description": "x", "seed": 0, "global_test": [0, 5],
        "clients": [{"cid": 0, "train": [1, 2], "test": [3], "n_train": 2},
                    {"cid": 1, "train": [4], "test": []}]}"#;

#[test]
fn split_file_parses_and_validates() {
    let split = SplitFile::from_json(SMALL).unwrap();
    assert_eq!(split.global_test, vec![0, 5]);
    assert_eq!(split.client(1).unwrap().train, vec![4]);
    split.validate(6).unwrap();
    assert!(matches!(
        split.validate(5),
        Err(PartitionError::IndexOutOfRange { index: 5, .. })
    ));

    let mut dup = split.clone();
    dup.clients[1].test.push(2);
    let err = dup.validate(6).unwrap_err();
    let PartitionError::DuplicateRow { index: 2, place } = &err else {
        panic!("{err}")
    };
    assert_eq!(place, "client 1 test");
    let mut dup = split.clone();
    dup.clients[0].train.push(0);
    assert!(matches!(
        dup.validate(6),
        Err(PartitionError::DuplicateRow { index: 0, .. })
    ));
    let mut dup = split.clone();
    dup.clients[1].cid = 0;
    assert!(matches!(dup.validate(6), Err(PartitionError::DuplicateClient(0))));
    let mut empty = split;
    empty.clients[1].train.clear();
    assert!(matches!(empty.validate(6), Err(PartitionError::EmptyClient(1))));

    assert!(matches!(
        SplitFile::from_json(r#"{"clients": []}"#),
        Err(PartitionError::Json { .. })
    ));
}

#[test]
fn shipped_digits_split_loads_and_validates() {
    let split = SplitFile::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits_partition.json")).unwrap();
    split.validate(1797).unwrap();
    assert_eq!(split.clients.len(), 10);
    let rows = split.global_test.len()
        + split
            .clients
            .iter()
            .map(|c| c.train.len() + c.test.len())
            .sum::<usize>();
    assert_eq!(rows, 1797);
    assert!(matches!(
        SplitFile::load("/nonexistent.json"),
        Err(PartitionError::Io { .. })
    ));
}

#[test]
fn validation_split_is_seeded_and_keeps_a_training_row() {
    let parts = vec![(0..100).collect(), vec![100], vec![101, 102]];
    let splits = split_validation(parts.clone(), 0.2, &mut StdRng::seed_from_u64(5)).unwrap();
    assert_eq!(
        splits,
        split_validation(parts.clone(), 0.2, &mut StdRng::seed_from_u64(5)).unwrap()
    );
    assert_eq!((splits[0].train.len(), splits[0].test.len()), (80, 20));
    assert_eq!((splits[1].train.clone(), splits[1].test.clone()), (vec![100], vec![]));
    assert_eq!(splits[2].train.len() + splits[2].test.len(), 2);
    assert!(!splits[2].train.is_empty());
    assert_eq!(splits.iter().map(|s| s.cid).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(matches!(
        split_validation(parts, 1.0, &mut StdRng::seed_from_u64(5)),
        Err(PartitionError::InvalidFraction { .. })
    ));
}

#[test]
fn generated_split_is_a_valid_split_file() {
    let labels = labels();
    let mut rng = StdRng::seed_from_u64(9);
    let p = Dirichlet {
        alpha: 0.5,
        min_size: 10,
    };
    let split = SplitFile::generate(&labels, &p, 10, 0.2, 0.2, &mut rng).unwrap();
    split.validate(labels.len()).unwrap();
    assert_eq!(split.global_test.len(), 200);
    let test_counts = split.global_test.iter().fold([0; 10], |mut c, &r| {
        c[labels[r] as usize] += 1;
        c
    });
    assert_eq!(test_counts, [20; 10]);
    let total = 200
        + split
            .clients
            .iter()
            .map(|c| c.train.len() + c.test.len())
            .sum::<usize>();
    assert_eq!(total, labels.len());
}
