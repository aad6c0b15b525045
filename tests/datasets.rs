//! The real datasets load as documented.

mod common;

use fedtune::agent::data::{FASHION_MNIST_DIR, load_fashion_mnist};

#[test]
fn the_bundled_digits_split_matches_its_description() {
    let data = common::digits();
    assert_eq!(data.dataset.len(), 1797);
    assert_eq!(data.dataset.dim(), 64);
    assert_eq!(data.dataset.classes(), 10);
    assert!(data.dataset.features().iter().all(|&x| (0.0..=1.0).contains(&x)));
    assert_eq!(data.clients(), 10);
    assert_eq!(data.global_test().unwrap().len(), 360);
    let rows: usize = (0..10)
        .map(|i| data.client(i).map(|(t, v)| t.len() + v.len()).unwrap())
        .sum();
    assert_eq!(rows + 360, 1797);
}

/// Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (installed by
/// `.ci/run`).
#[test]
fn fashion_mnist_loads_from_the_debian_package() {
    let test = load_fashion_mnist(FASHION_MNIST_DIR, false).expect("apt-get install dataset-fashion-mnist");
    assert_eq!((test.len(), test.dim(), test.classes()), (10_000, 784, 10));
    assert_eq!(test.label_counts(), vec![1000; 10]);
}

/// The WordNet text task comes from the Debian package `wordnet-base` (installed by
/// `.ci/test`): ten categories of 2,000 distinct noun definitions, split 80 / 20.
#[test]
fn the_wordnet_task_loads_from_the_debian_package() {
    use fedtune::agent::text::{Split, WORDNET_DIR, WordnetTask};
    let task = WordnetTask::default();
    let train = task
        .load(WORDNET_DIR, Split::Train)
        .expect("apt-get install wordnet-base");
    let test = task.load(WORDNET_DIR, Split::Test).unwrap();
    assert_eq!((train.len(), train.dim(), train.classes()), (16_000, 32, 10));
    assert_eq!(train.label_counts(), vec![1_600; 10]);
    assert_eq!(test.label_counts(), vec![400; 10]);
    assert!(
        train
            .features()
            .iter()
            .all(|&id| id.fract() == 0.0 && (0.0..8_192.0).contains(&id))
    );
    // Definitions are short: most rows end in padding, and none is empty.
    let features = train.features();
    let rows = || features.chunks(32);
    assert!(rows().all(|row| row[0] > 0.0));
    let padded = rows().filter(|row| row[31] == 0.0).count();
    assert!(padded > 15_000, "{padded}");
    // The same settings give the same rows, so agents and the aggregator agree.
    assert_eq!(task.load(WORDNET_DIR, Split::Test).unwrap().features(), test.features());
}

/// An agent reads only its own Fashion-MNIST rows, and they are the rows the whole
/// dataset's split gives it.
#[test]
fn an_agent_streams_exactly_its_own_fashion_mnist_share() {
    use fedtune::agent::config::{DataConfig, DataSource, FederatedData};
    use fedtune::agent::partition::PartitionSpec;
    let source = DataSource::FashionMnist {
        dir: FASHION_MNIST_DIR.into(),
    };
    let partition = PartitionSpec::Dirichlet(0.5);
    let whole = FederatedData::load(&source, &partition, 10, 7).expect("apt-get install dataset-fashion-mnist");
    for client in [0, 9] {
        let config = DataConfig {
            source: source.clone(),
            partition: Some(partition.clone()),
            clients: 10,
            client,
            seed: 7,
            validation: 0.2,
        };
        let (train, validation) = config.load().unwrap();
        let (want_train, want_validation) = whole.client(client).unwrap();
        assert_eq!(train, want_train, "client {client}");
        assert_eq!(validation, want_validation, "client {client}");
    }
}
