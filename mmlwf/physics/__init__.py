"""Physical energy terms of the models (jax): PhysNet's Coulomb (:mod:`.coulomb`), the ZBL
repulsion (:mod:`.zbl`) and D3(BJ) dispersion (:mod:`.d3`)."""
