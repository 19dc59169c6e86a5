"""Parzen estimators over a `SearchSpace`'s encoding: fit from weighted observations, log-density, sampling.

A Parzen estimator is a mixture with one kernel per observation plus one wide *prior* kernel, so it is never zero
anywhere in the space. Kernels, per dimension model (see `mpqjax.optim.space`):

- TABLE, ordered (ordinal choices, short integer grids): a Gaussian on the index scale with standard deviation
  ``bandwidth * n`` (n choices), integrated over each index's bin [j - 1/2, j + 1/2] and renormalised over the n
  indices (a truncated, discretised Gaussian). Precomputed as an n x n table of log-probabilities.
- TABLE, categorical: ``(1 - s) * [j == centre] + s * p_j`` with ``s = min(1, 2 * bandwidth)`` (a point mass mixed
  with the prior p, uniform unless the dimension has ``weights``; the factor 2 makes ``bandwidth = 0.25`` keep about
  half the mass on the centre).
- GRID (long integer grids): the same discretised Gaussian, computed directly instead of tabulated.
- LOG_INT: a Gaussian on log(value), integrated over [log(v - 1/2), log(v + 1/2)].
- CONTINUOUS: a Gaussian density truncated to the range (not truncated for a `mpqjax.optim.space.normal` one).

Numeric bandwidths are ``bandwidth * (high - low)`` on the encoded scale (``bandwidth * UNBOUNDED_SPREAD * sigma``
for a `normal` dimension). The prior kernel sits at the centre of each range with the whole range as its standard
deviation (a `normal` dimension's own prior; uniform for categorical dimensions).

Two modes: *joint* (each observation is one product kernel over all dimensions, so the mixture keeps the
correlations between dimensions) and *independent* (one mixture per dimension; the density is their product).

Tree-structured spaces (`mpqjax.optim.space.conditional`): an inactive dimension is NaN. In joint mode an
observation's kernel is the prior kernel on a dimension it lacks; in independent mode each dimension's mixture is
fitted over the observations that have it (`dimension_log_weights`); a candidate's density is over its active
dimensions only.

Everything here is jittable; what fixes shapes (the space's layout) is static NumPy data in `ParzenLayout`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr, ndtri

from mpqjax.optim.space import GRID, LOG_INT, TABLE, UNBOUNDED_SPREAD, SpaceSpec, snap

__all__ = ["LOG_FLOOR", "Kernels", "Parzen", "ParzenLayout", "component_log_probs", "dimension_log_weights", "fit",
           "kernel_tables", "kernels", "log_prob", "make_layout", "mixture_log_weights", "sample", "table_marginals"]

# Floor for per-kernel log-probabilities: keeps one-hot contractions free of -inf * 0 = NaN. A component that far
# from a point contributes nothing next to the prior kernel, which is always present.
LOG_FLOOR = -1e4


class ParzenLayout(NamedTuple):
    """A space's dimensions split into tabulated and numeric ones.

    The split (which columns are which, the largest number of choices) is static NumPy data; the per-dimension
    numbers may be traced arrays (a padded space of `mpqjax.optim.bucket`). A numeric dimension with an empty
    range (``high <= low``: a padded one, or a constant) is left out of every density.
    """

    spec: SpaceSpec
    table_dims: np.ndarray  # indices of TABLE dimensions (static)
    table_choices: jax.Array  # n per TABLE dimension
    table_ordered: jax.Array  # ordinal (True) or categorical (False)
    table_prior: jax.Array  # [Dt, J] prior probabilities of categorical choices (`SpaceSpec.prior`)
    numeric_dims: np.ndarray  # indices of GRID, LOG_INT and CONTINUOUS dimensions (static)
    numeric_model: jax.Array
    numeric_low: jax.Array
    numeric_high: jax.Array
    numeric_centre: jax.Array  # the prior kernel (`SpaceSpec.centre`, ``sigma``)
    numeric_sigma: jax.Array
    max_choices: int  # static
    conditional: bool = False  # static: observations and candidates may have inactive (NaN) dimensions


class Kernels(NamedTuple):
    """The kernels of a mixture, one per observation plus the prior (last), shared by estimators that differ only
    in their weights (l(x) and g(x) of a TPE step are fitted to the same history).

    TABLE dimensions are stored as the observations' indices plus one kernel table per dimension, never as a
    [components, dims, choices] array: scoring contracts one-hot indices with the tables instead (much cheaper).

    Attributes:
        table_index: [N, Dt] index of each observation on each TABLE dimension.
        tables: [Dt, J, J] ``tables[d, centre, j]``: log-probability of index ``j`` under a kernel at ``centre``.
        prior_table: [Dt, J] the prior kernel's log-probabilities.
        centres: [N + 1, Dn] kernel centres of the numeric dimensions (encoded scale), prior last.
        sigmas: [N + 1, Dn] kernel standard deviations of the numeric dimensions.
        active: [N, D] which dimensions each observation has (a conditional layout), or None. On a dimension it
            lacks, an observation's kernel is the prior kernel (its numeric centre and sigma are the prior's).
    """

    table_index: jax.Array
    tables: jax.Array
    prior_table: jax.Array
    centres: jax.Array
    sigmas: jax.Array
    active: jax.Array | None = None


class Parzen(NamedTuple):
    """A fitted mixture: normalised log weights [M] (-inf for excluded observations) over `Kernels`."""

    log_weights: jax.Array
    kernels: Kernels


def make_layout(spec: SpaceSpec, *, num_table: int | None = None, max_choices: int | None = None,
                conditional: bool | None = None) -> ParzenLayout:
    """The layout of a space for Parzen estimators.

    Args:
        spec: a `SearchSpace.spec` (NumPy), or a padded spec (`mpqjax.optim.bucket`, possibly traced).
        num_table: for a padded spec, its first ``num_table`` dimensions are the tabulated ones and the rest the
            numeric ones; None: found from ``spec.model`` (NumPy only).
        max_choices: for a padded spec, the padded number of choices; None: the largest of ``spec.num_choices``.
        conditional: whether dimensions can be inactive (NaN); None: from ``spec`` (NumPy only).
    """
    if conditional is None:
        conditional = bool(np.any(np.asarray(spec.parent) >= 0) or np.any(np.asarray(spec.optional)))
    if num_table is None:
        model = np.asarray(spec.model)
        table_dims, numeric_dims = np.flatnonzero(model == TABLE), np.flatnonzero(model != TABLE)
    else:
        table_dims, numeric_dims = np.arange(num_table), np.arange(num_table, len(spec.model))
    if max_choices is None:
        max_choices = int(np.asarray(spec.num_choices)[table_dims].max()) if table_dims.size else 1
    return ParzenLayout(
        spec=spec,
        table_dims=table_dims,
        table_choices=spec.num_choices[table_dims],
        table_ordered=spec.ordered[table_dims],
        table_prior=spec.prior[table_dims][:, :max_choices],
        numeric_dims=numeric_dims,
        numeric_model=spec.model[numeric_dims],
        numeric_low=spec.low[numeric_dims],
        numeric_high=spec.high[numeric_dims],
        numeric_centre=spec.centre[numeric_dims],
        numeric_sigma=spec.sigma[numeric_dims],
        max_choices=max_choices,
        conditional=conditional,
    )


def _log_gaussian_mass(lower, upper):
    """log(Phi(upper) - Phi(lower)) for lower <= upper, stable in both tails."""
    flip = lower > 0  # in the upper tail use the mirror image, where Phi is not close to 1
    lo, hi = jnp.where(flip, -upper, lower), jnp.where(flip, -lower, upper)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-12)))


def _gaussian_mass(lower, upper):
    """Phi(upper) - Phi(lower), mirrored into the lower tail for accuracy (cheaper than `_log_gaussian_mass`)."""
    flip = lower > 0
    lo, hi = jnp.where(flip, -upper, lower), jnp.where(flip, -lower, upper)
    # Phi(z) = erfc(-z / sqrt 2) / 2: one XLA primitive, much faster to compile than jax.scipy's ndtr
    return 0.5 * (jax.lax.erfc(-hi * _SQRT_HALF) - jax.lax.erfc(-lo * _SQRT_HALF))


_SQRT_HALF = 0.7071067811865476


def kernel_tables(layout: ParzenLayout, bandwidth) -> tuple[jax.Array, jax.Array]:
    """Log-probability tables of the TABLE dimensions' kernels.

    Args:
        layout: from `make_layout`.
        bandwidth: scalar bandwidth scale (traced).

    Returns:
        ``(tables, prior)``: tables [Dt, J, J] with ``tables[d, centre, j]`` the log-probability of index ``j`` under
        the kernel centred on index ``centre``; prior [Dt, J] the prior kernel. Indices past a dimension's choices
        get `LOG_FLOOR`.
    """
    size = layout.max_choices
    n = jnp.asarray(layout.table_choices, jnp.float32)[:, None, None]  # [Dt, 1, 1]
    index = jnp.arange(size, dtype=jnp.float32)
    centre, target = index[None, :, None], index[None, None, :]
    in_range = target < n

    def discretised_gaussian(centre, sigma):
        mass = jnp.where(in_range, _gaussian_mass((target - 0.5 - centre) / sigma, (target + 0.5 - centre) / sigma),
                         0.0)
        return jnp.log(jnp.maximum(mass, 1e-30)) - jnp.log(jnp.maximum(jnp.sum(mass, axis=-1, keepdims=True), 1e-30))

    ordered = discretised_gaussian(centre, bandwidth * n)
    smoothing = jnp.minimum(1.0, 2.0 * bandwidth)
    choice_prior = jnp.asarray(layout.table_prior)[:, None, :]  # [Dt, 1, J]: categorical priors
    categorical = jnp.log(jnp.maximum(jnp.where(centre == target, 1.0 - smoothing, 0.0) + smoothing * choice_prior,
                                      1e-30))
    is_ordered = jnp.asarray(layout.table_ordered)[:, None, None]
    tables = jnp.where(in_range & (centre < n), jnp.where(is_ordered, ordered, categorical), LOG_FLOOR)

    prior_ordered = discretised_gaussian((n - 1) / 2, n)[:, 0, :]
    prior_uniform = jnp.log(jnp.maximum(choice_prior[:, 0, :], 1e-30))
    prior = jnp.where(in_range[:, 0, :], jnp.where(is_ordered[:, 0, :], prior_ordered, prior_uniform), LOG_FLOOR)
    return jnp.maximum(tables, LOG_FLOOR), jnp.maximum(prior, LOG_FLOOR)


def kernels(layout: ParzenLayout, observations, bandwidth) -> Kernels:
    """Kernels centred on encoded observations [N, D] plus the prior kernel (see the module docstring)."""
    observations = jnp.asarray(observations, jnp.float32)
    active = ~jnp.isnan(observations) if layout.conditional else None
    observations = jnp.nan_to_num(observations) if layout.conditional else observations
    tables, prior = kernel_tables(layout, bandwidth)
    low, high = jnp.asarray(layout.numeric_low), jnp.asarray(layout.numeric_high)
    prior_centre, prior_sigma = jnp.asarray(layout.numeric_centre), jnp.asarray(layout.numeric_sigma)
    spread = jnp.where(jnp.isinf(low) | jnp.isinf(high), UNBOUNDED_SPREAD * prior_sigma, prior_sigma)
    numeric = observations[:, layout.numeric_dims]
    sigma = jnp.broadcast_to(bandwidth * spread, numeric.shape)
    if active is not None:  # a missing dimension: the prior kernel
        numeric_active = active[:, layout.numeric_dims]
        numeric = jnp.where(numeric_active, numeric, prior_centre)
        sigma = jnp.where(numeric_active, sigma, prior_sigma)
    centres = jnp.concatenate([numeric, prior_centre[None]], axis=0)
    sigmas = jnp.concatenate([sigma, prior_sigma[None]], axis=0)
    table_index = observations[:, layout.table_dims].astype(jnp.int32)
    return Kernels(table_index, tables, prior, centres, jnp.maximum(sigmas, 1e-6), active)


def mixture_log_weights(weights, prior_weight=1.0) -> jax.Array:
    """Normalised log weights [N + 1] of observations with ``weights`` [N] and the prior kernel (last)."""
    all_weights = jnp.concatenate([jnp.asarray(weights, jnp.float32), jnp.asarray(prior_weight, jnp.float32)[None]])
    return jnp.log(all_weights) - jnp.log(jnp.sum(all_weights))


def fit(layout: ParzenLayout, observations, weights, bandwidth, prior_weight=1.0) -> Parzen:
    """Fit a Parzen estimator to weighted observations.

    Args:
        layout: from `make_layout`.
        observations: [N, D] encoded (snapped) configurations.
        weights: [N] non-negative weights; 0 excludes an observation (use it to select a cluster).
        bandwidth: scalar bandwidth scale (see module docstring).
        prior_weight: weight of the prior kernel relative to one observation of weight 1.

    Returns:
        A `Parzen` mixture with N + 1 components (the prior last).
    """
    return Parzen(mixture_log_weights(weights, prior_weight), kernels(layout, observations, bandwidth))


def _numeric_log_kernels(layout: ParzenLayout, kernels: Kernels, numeric_x):
    """Per-dimension log kernel values [C, M, Dn] of numeric coordinates [C, Dn] under every component."""
    x = numeric_x[:, None, :]
    centre, sigma = kernels.centres[None], kernels.sigmas[None]
    low, high = jnp.asarray(layout.numeric_low), jnp.asarray(layout.numeric_high)
    log_norm = _log_gaussian_mass((low - centre) / sigma, (high - centre) / sigma)
    model = jnp.asarray(layout.numeric_model)
    natural = jnp.exp(jnp.minimum(x, 80.0))
    lower = jnp.where(model == GRID, x - 0.5, jnp.log(jnp.maximum(natural - 0.5, 1e-12)))
    upper = jnp.where(model == GRID, x + 0.5, jnp.log(natural + 0.5))
    lower, upper = jnp.maximum(lower, low), jnp.minimum(upper, high)
    log_mass = _log_gaussian_mass((lower - centre) / sigma, (upper - centre) / sigma)
    z = (x - centre) / sigma
    log_density = -0.5 * z**2 - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi)
    is_discrete = (model == GRID) | (model == LOG_INT)
    log_kernel = jnp.maximum(jnp.where(is_discrete, log_mass, log_density) - log_norm, LOG_FLOOR)
    return jnp.where(high > low, log_kernel, 0.0)  # an empty range (padding) is left out


def component_log_probs(layout: ParzenLayout, kernels: Kernels, x) -> jax.Array:
    """Joint log kernel value [C, N + 1] of encoded configurations ``x`` [C, D] under every component."""
    x, candidate_active = _split_active(layout, x)
    candidate_index = x[:, layout.table_dims].astype(jnp.int32)  # [C, Dt]
    dim = jnp.arange(layout.table_dims.size)
    # rows[c, d, i] = log-probability of the candidate's index on dimension d under a kernel centred at index i
    rows = jnp.swapaxes(kernels.tables, 1, 2)[dim[None, :], candidate_index]  # [C, Dt, J]
    centre_one_hot = jax.nn.one_hot(kernels.table_index, layout.max_choices, dtype=jnp.float32)  # [N, Dt, J]
    prior_rows = jnp.take_along_axis(kernels.prior_table[None], candidate_index[..., None], axis=-1)[..., 0]
    if candidate_active is None:
        observed = jnp.einsum("ndi,cdi->cn", centre_one_hot, rows)
    else:  # a dimension the candidate lacks counts for nothing; one the observation lacks, as the prior kernel
        table_active = candidate_active[:, layout.table_dims]
        rows, prior_rows = rows * table_active[..., None], prior_rows * table_active
        observation_active = kernels.active[:, layout.table_dims]
        observed = (jnp.einsum("ndi,cdi->cn", centre_one_hot * observation_active[..., None], rows)
                    + jnp.einsum("nd,cd->cn", (~observation_active).astype(jnp.float32), prior_rows))
    per_component = jnp.concatenate([observed, prior_rows.sum(-1)[:, None]], axis=1)
    if layout.numeric_dims.size:
        per_dim = _numeric_log_kernels(layout, kernels, x[:, layout.numeric_dims])
        if candidate_active is not None:
            per_dim = jnp.where(candidate_active[:, None, layout.numeric_dims], per_dim, 0.0)
        per_component = per_component + per_dim.sum(-1)
    return per_component


def _split_active(layout: ParzenLayout, x):
    """Configurations with NaN (inactive) entries zeroed, and which entries are active (None: a flat layout)."""
    x = jnp.asarray(x, jnp.float32)
    if not layout.conditional:
        return x, None
    return jnp.nan_to_num(x), ~jnp.isnan(x)


def dimension_log_weights(layout: ParzenLayout, parzen: Parzen) -> jax.Array:
    """Normalised log weights [N + 1, D] of each dimension's own mixture (independent mode).

    In a flat layout every dimension has the mixture's weights; in a conditional one each dimension's mixture is
    fitted over the observations that have it (the others' weights are 0, the rest renormalised).
    """
    weights = jnp.broadcast_to(parzen.log_weights[:, None], parzen.log_weights.shape + (len(layout.spec.model),))
    if parzen.kernels.active is None:
        return weights
    has = jnp.concatenate([parzen.kernels.active, jnp.ones((1, weights.shape[1]), bool)], axis=0)
    weights = jnp.where(has, weights, -jnp.inf)
    return weights - jax.nn.logsumexp(weights, axis=0, keepdims=True)


def log_prob(layout: ParzenLayout, parzen: Parzen, x, *, joint: bool = True) -> jax.Array:
    """Log-density (log-probability on discrete dimensions) of encoded configurations ``x`` [C, D], shape [C].

    In joint mode each component is a product kernel over all dimensions; in independent mode each dimension is
    its own mixture and the density is the product of the per-dimension mixtures.
    """
    if joint:
        return jax.nn.logsumexp(parzen.log_weights[None] + component_log_probs(layout, parzen.kernels, x), axis=1)
    x, candidate_active = _split_active(layout, x)
    total = jnp.zeros(x.shape[0])
    weights = dimension_log_weights(layout, parzen)  # [M, D]
    if layout.table_dims.size:
        index = x[:, layout.table_dims].astype(jnp.int32)
        marginal = table_marginals(parzen, weights[:, layout.table_dims])  # [Dt, J]
        per_dim = jnp.take_along_axis(marginal[None], index[..., None], axis=-1)[..., 0]
        if candidate_active is not None:
            per_dim = jnp.where(candidate_active[:, layout.table_dims], per_dim, 0.0)
        total = total + per_dim.sum(-1)
    if layout.numeric_dims.size:
        per_dim = _numeric_log_kernels(layout, parzen.kernels, x[:, layout.numeric_dims])  # [C, M, Dn]
        per_dim = jax.nn.logsumexp(weights[None, :, layout.numeric_dims] + per_dim, axis=1)
        if candidate_active is not None:
            per_dim = jnp.where(candidate_active[:, layout.numeric_dims], per_dim, 0.0)
        total = total + per_dim.sum(-1)
    return total


def table_marginals(parzen: Parzen, log_weights=None) -> jax.Array:
    """Log-probabilities [Dt, J] of each index of each TABLE dimension under the mixture.

    ``log_weights``: optional per-dimension log weights [N + 1, Dt] (`dimension_log_weights` of the TABLE
    dimensions); default: the mixture's weights for every dimension.
    """
    kernels = parzen.kernels
    num_observations, num_dims = kernels.table_index.shape
    if log_weights is None:
        log_weights = jnp.broadcast_to(parzen.log_weights[:, None], (num_observations + 1, num_dims))
    weights = jnp.exp(log_weights)
    # total weight of the kernels centred on each index: a scatter-add (far cheaper than a one-hot contraction)
    centre_weight = jnp.zeros(kernels.prior_table.shape).at[jnp.arange(num_dims)[None, :], kernels.table_index].add(
        weights[:-1])  # [Dt, J]
    mass = jnp.einsum("di,dij->dj", centre_weight, jnp.exp(kernels.tables)) + weights[-1][:, None] * jnp.exp(
        kernels.prior_table)
    return jnp.log(jnp.maximum(mass, 1e-30))


def _inverse_cdf(log_weights, u):
    """Index drawn from unnormalised log weights [..., K] with uniforms u [...] (inverse-CDF sampling)."""
    cdf = jnp.cumsum(jax.nn.softmax(log_weights, axis=-1), axis=-1)
    index = jnp.sum(cdf < (u * cdf[..., -1])[..., None], axis=-1)
    return jnp.minimum(index, log_weights.shape[-1] - 1)


def sample(key, layout: ParzenLayout, parzen: Parzen, n: int, *, joint: bool = True) -> jax.Array:
    """Draw ``n`` encoded configurations [n, D] from the mixture (snapped to valid values).

    In joint mode one component is drawn per sample and every dimension is drawn from its kernel (the prior kernel
    where the observation lacks the dimension); in independent mode each dimension draws from its own mixture. Every
    dimension gets a value: which are active is the caller's to settle (`mpqjax.optim.space.deactivate`). Every
    draw is an inverse-CDF transform of one block of uniform numbers, so the whole sample costs one call of the PRNG
    (each PRNG call is expensive to compile on CPU).
    """
    kernels = parzen.kernels
    num_observations = kernels.table_index.shape[0]
    num_table, num_numeric = layout.table_dims.size, layout.numeric_dims.size
    u = jax.random.uniform(key, (n, 1 + num_table + 2 * num_numeric))
    u_component, u_table = u[:, 0], u[:, 1:1 + num_table]
    u_numeric_component, u_numeric = u[:, 1 + num_table:1 + num_table + num_numeric], u[:, 1 + num_table + num_numeric:]
    x = jnp.zeros((n, len(layout.spec.model)), jnp.float32)
    if joint:
        components = _inverse_cdf(parzen.log_weights, u_component)  # [n]
        dim = jnp.arange(num_table)
        observation = jnp.minimum(components, num_observations - 1)
        centre_index = kernels.table_index[observation]  # [n, Dt]
        from_prior = jnp.broadcast_to((components == num_observations)[:, None], centre_index.shape)
        if kernels.active is not None:
            from_prior = from_prior | ~kernels.active[observation][:, layout.table_dims]
        table_logits = jnp.where(from_prior[..., None], kernels.prior_table[None],
                                 kernels.tables[dim[None, :], centre_index])  # [n, Dt, J]
        numeric_components = jnp.broadcast_to(components[:, None], (n, num_numeric))
    else:
        weights = dimension_log_weights(layout, parzen)  # [M, D]
        table_logits = jnp.broadcast_to(table_marginals(parzen, weights[:, layout.table_dims]),
                                        (n,) + kernels.prior_table.shape)
        numeric_components = _inverse_cdf(weights[:, layout.numeric_dims].T, u_numeric_component)  # [n, Dn]
    if num_table:
        valid = jnp.arange(layout.max_choices) < jnp.asarray(layout.table_choices)[:, None]
        table_draw = _inverse_cdf(jnp.where(valid, table_logits, -jnp.inf), u_table)
        x = x.at[:, layout.table_dims].set(table_draw.astype(jnp.float32))
    if num_numeric:
        dim = jnp.arange(num_numeric)
        centre = kernels.centres[numeric_components, dim[None, :]]
        sigma = kernels.sigmas[numeric_components, dim[None, :]]
        low, high = jnp.asarray(layout.numeric_low), jnp.asarray(layout.numeric_high)
        cdf_low, cdf_high = ndtr((low - centre) / sigma), ndtr((high - centre) / sigma)
        probability = jnp.clip(cdf_low + u_numeric * (cdf_high - cdf_low), 1e-7, 1 - 1e-7)
        x = x.at[:, layout.numeric_dims].set(jnp.clip(centre + sigma * ndtri(probability), low, high))
    return snap(layout.spec, x)
