//! Round parameters, separation between rounds, the wire types, and distributed noise.

use super::*;

#[test]
fn parameters_are_validated() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let good = SecureRound {
        index: 0,
        cohort: 5,
        degree: None,
        threshold: 3,
        clip: 1.0,
        scale: 1e6,
        noise: None,
    };
    assert!(good.validate().is_ok());
    // Cohorts past GF(2^8)'s 255, on the complete graph or a sparse one.
    for degree in [None, Some(2), Some(40)] {
        let large = SecureRound {
            index: 299,
            cohort: 300,
            degree,
            ..good
        };
        assert!(large.validate().is_ok(), "{large:?}");
    }
    let bad = [
        SecureRound {
            cohort: 1,
            threshold: 1,
            ..good
        },
        SecureRound { cohort: 65_536, ..good },
        SecureRound {
            cohort: 300,
            degree: Some(3),
            ..good
        },
        SecureRound {
            cohort: 300,
            degree: Some(0),
            ..good
        },
        // A neighbourhood of 3 cannot meet a threshold of 4.
        SecureRound {
            cohort: 300,
            degree: Some(2),
            threshold: 4,
            ..good
        },
        SecureRound { threshold: 1, ..good },
        SecureRound { threshold: 6, ..good },
        SecureRound { clip: f32::NAN, ..good },
        SecureRound { clip: -1.0, ..good },
        SecureRound { scale: 0.0, ..good },
        SecureRound {
            scale: f64::INFINITY,
            ..good
        },
        SecureRound { index: 5, ..good },
        SecureRound {
            noise: Some(DistributedNoise { clip: 0.0, std: 0.1 }),
            ..good
        },
        SecureRound {
            noise: Some(DistributedNoise {
                clip: 1.0,
                std: f32::NAN,
            }),
            ..good
        },
    ];
    for params in bad {
        assert!(ClientRound::new(context(), params, &mut rng).is_err(), "{params:?}");
    }
    assert!(ServerRound::new(context(), 65_536, 3, 1.0, 4, 10).is_err());
    assert!(ServerRound::new(context(), 5, 6, 1.0, 4, 10).is_err());
    assert!(ServerRound::new(context(), 5, 3, 0.0, 4, 10).is_err());
    assert!(ServerRound::new(context(), 5, 3, 1.0, 0, 10).is_err());
    assert!(ServerRound::new(context(), 5, 3, 1.0, 4, 0).is_err());
    let err = ServerRound::new(context(), 5, 1, 1.0, 4, 10).unwrap_err();
    assert!(
        err.to_string()
            .contains("threshold must be between 2 and the neighbourhood size 5, not 1"),
        "{err}"
    );
    // On a sparse graph the threshold is bounded by the neighbourhood, not the cohort.
    let sparse = ServerRound::new(context(), 50, 8, 1.0, 4, 10).unwrap();
    let err = sparse.with_degree(6).unwrap_err();
    assert!(
        err.to_string()
            .contains("threshold must be between 2 and the neighbourhood size 7, not 8"),
        "{err}"
    );
    let odd = ServerRound::new(context(), 50, 3, 1.0, 4, 10).unwrap().with_degree(5);
    assert!(odd.unwrap_err().to_string().contains("even"));
    let server = ServerRound::new(context(), 5, 3, 1.0, 4, 10).unwrap();
    assert_eq!(
        server.params_for(4),
        SecureRound {
            index: 4,
            cohort: 5,
            degree: None,
            threshold: 3,
            clip: 1.0,
            scale: scale_for(1.0, 10),
            noise: None,
        }
    );
    assert!(server.params_for(4).validate().is_ok());
}

#[test]
fn a_round_does_not_mix_with_another() {
    // An agent of another round (another context) cannot take part: its shares do not open.
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let server = ServerRound::new(context(), 2, 2, CLIP, 4, 10).unwrap();
    let other = RoundContext { round: 8, ..context() };
    let (mut a, keys_a) = ClientRound::new(context(), server.params_for(0), &mut rng).unwrap();
    let (mut b, keys_b) = ClientRound::new(other, server.params_for(1), &mut rng).unwrap();
    let roster = [PeerKeys { index: 0, keys: keys_a }, PeerKeys { index: 1, keys: keys_b }];
    let from_a = a.share_keys(&roster, &mut rng).unwrap();
    b.share_keys(&roster, &mut rng).unwrap();
    assert_eq!(
        b.receive_shares(&from_a).unwrap_err(),
        SecAggError::Decryption { from: 0, to: 1 }
    );
}

#[test]
fn wire_types_survive_bincode() {
    let config = bincode::config::standard();
    let reveal = vec![
        Reveal::SelfMask {
            of: 3,
            share: Share { x: 4, y: [7; 32] },
        },
        Reveal::MaskKey {
            of: 1,
            share: Share { x: 4, y: [9; 32] },
        },
    ];
    let bytes = bincode::serde::encode_to_vec(&reveal, config).unwrap();
    let (back, _): (Vec<Reveal>, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(back, reveal);
    let params = SecureRound {
        index: 2,
        cohort: 9,
        degree: Some(4),
        threshold: 5,
        clip: 0.5,
        scale: 1234.5,
        noise: Some(DistributedNoise { clip: 0.25, std: 0.01 }),
    };
    let bytes = bincode::serde::encode_to_vec(params, config).unwrap();
    let (back, _): (SecureRound, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(back, params);
}

/// A distributed-noise round: each agent clips in L2 and adds its share of the noise; the
/// unmasked mean is the mean of the clipped updates plus noise whose spread matches
/// σ · clip · √n / cohort for the n agents whose inputs arrived.
#[test]
fn distributed_noise_sums_to_the_promised_spread_with_and_without_dropouts() {
    const N: u32 = 8;
    let (sigma, l2) = (1.2f64, 5.0f32);
    let noise = DistributedNoise {
        clip: l2,
        std: (sigma * f64::from(l2) / f64::from(N).sqrt()) as f32,
    };
    for dropped in [vec![], vec![2, 5]] {
        let mut rng = ChaCha20Rng::seed_from_u64(40 + dropped.len() as u64);
        let mut server = ServerRound::new(context(), N, 4, noise.coordinate_range(), NUMEL, u64::from(N))
            .unwrap()
            .with_noise(noise)
            .unwrap();
        let mut clients = Vec::new();
        for i in 0..N {
            let params = server.params_for(i);
            assert_eq!(params.noise, Some(noise));
            let (client, keys) = ClientRound::new(context(), params, &mut rng).unwrap();
            server.add_keys(i, keys).unwrap();
            clients.push(client);
        }
        let roster = server.roster().unwrap();
        for (i, client) in clients.iter_mut().enumerate() {
            let shares = client.share_keys(&roster, &mut rng).unwrap();
            server.add_shares(i as u32, shares).unwrap();
        }
        let u2 = server.close_shares().unwrap();
        // Updates of norm ~ 0.3 · √2500 = 15, so every one is clipped to 5.
        let updates: Vec<Vec<f32>> = (0..N)
            .map(|_| (0..NUMEL).map(|_| rng.random_range(-0.5f32..0.5)).collect())
            .collect();
        let mut clipped_sum = vec![0f64; NUMEL];
        for &i in &u2 {
            let client = &mut clients[i as usize];
            client.receive_shares(&server.shares_for(i)).unwrap();
            if dropped.contains(&i) {
                continue;
            }
            let mut update = updates[i as usize].clone();
            assert!(noise.apply(&mut update, &mut rng), "the update is longer than the clip");
            let norm = updates[i as usize]
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            for (sum, &v) in clipped_sum.iter_mut().zip(&updates[i as usize]) {
                *sum += f64::from(v) * f64::from(l2) / norm;
            }
            assert_eq!(
                client.mask(&update, 2).unwrap_err(),
                SecAggError::NoisedWeight { weight: 2 }
            );
            let masked = client.mask(&update, 1).unwrap();
            assert_eq!(
                server.add_masked(i, &masked, 3).unwrap_err(),
                SecAggError::NoisedWeight { weight: 3 }
            );
            server.add_masked(i, &masked, 1).unwrap();
        }
        let u3 = server.close_inputs().unwrap();
        for &i in &u3 {
            let reveals = clients[i as usize].reveal(&u3).unwrap();
            server.add_reveal(i, reveals).unwrap();
        }
        let unmasked = server.finish().unwrap();
        let n = N as usize - dropped.len();
        assert_eq!(unmasked.total_weight, n as u64);
        // mean − clipped mean = noise sum / n, whose std is σ · clip · √(n / N) / n.
        let residual: Vec<f64> = unmasked
            .mean
            .iter()
            .zip(&clipped_sum)
            .map(|(&got, &sum)| f64::from(got) - sum / n as f64)
            .collect();
        let mean = residual.iter().sum::<f64>() / NUMEL as f64;
        let std = (residual.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / NUMEL as f64).sqrt();
        let promised = sigma * f64::from(l2) * (n as f64 / f64::from(N)).sqrt() / n as f64;
        assert!(mean.abs() < 4.0 * promised / (NUMEL as f64).sqrt(), "noise mean {mean}");
        assert!(
            (std / promised - 1.0).abs() < 0.05,
            "noise std {std}, promised {promised} ({n} of {N} agents)"
        );
    }
}

#[test]
fn a_noised_round_needs_a_coordinate_range_that_holds_the_noise() {
    let noise = DistributedNoise { clip: 1.0, std: 0.1 };
    let server = ServerRound::new(context(), 4, 2, 1.5, NUMEL, 4).unwrap();
    let err = server.with_noise(noise).unwrap_err();
    assert!(err.to_string().contains("below the noised update's range 2"), "{err}");
}

#[test]
fn noise_clips_only_longer_updates_and_is_centred() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let quiet = DistributedNoise { clip: 2.0, std: 0.0 };
    let mut short = vec![0.6f32, 0.8];
    assert!(!quiet.apply(&mut short, &mut rng));
    assert_eq!(short, [0.6, 0.8]);
    let mut long = vec![3.0f32, 4.0];
    assert!(quiet.apply(&mut long, &mut rng));
    assert!((long[0] - 1.2).abs() < 1e-6 && (long[1] - 1.6).abs() < 1e-6, "{long:?}");
    let noisy = DistributedNoise { clip: 1.0, std: 0.5 };
    let mut zeros = vec![0f32; 100_001];
    noisy.apply(&mut zeros, &mut rng);
    let mean = zeros.iter().map(|&v| f64::from(v)).sum::<f64>() / zeros.len() as f64;
    let var = zeros.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / zeros.len() as f64;
    assert!(mean.abs() < 0.01, "{mean}");
    assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
}
