"""The CITES taxonomy: taxa, product groups and look-alike materials, read from data files.

The data lives in ``model/data/taxa.tsv`` (one taxon per line), ``model/data/populations.tsv``
(split listings: appendix per group of origin countries) and ``model/data/countries.tsv`` (the
officially assigned ISO 3166-1 alpha-2 codes). One loader, :meth:`Taxonomy.load`, reads and
validates them; every error names the file and line (``TaxonomyError``). The format is described
in ``docs/taxonomy.md``.

The questions it answers: find a taxon by name or synonym (:meth:`Taxonomy.find`), walk the
hierarchy (:meth:`Taxonomy.ancestors`, :meth:`Taxonomy.lineage`, :meth:`Taxonomy.children`) and
say which appendix applies to a taxon from a given origin country (:meth:`Taxonomy.appendix_for`).

The package: :mod:`~model.taxonomy.types` (the data types and errors),
:mod:`~model.taxonomy.loading` (reading and validating the files), :mod:`~model.taxonomy.appendix`
(the appendix rules) and :mod:`~model.taxonomy.lookup` (the :class:`Taxonomy` and its look-ups).
Import the public names from here.
"""

from model.taxonomy.appendix import AppendixRules
from model.taxonomy.loading import (
    COUNTRIES_PATH,
    DATA_DIR,
    DEFAULT_POPULATIONS_NAME,
    DEFAULT_TAXA_PATH,
    POPULATION_COLUMNS,
    TAXA_COLUMNS,
    load_taxa,
    read_countries,
)
from model.taxonomy.lookup import Taxonomy, default_taxonomy
from model.taxonomy.types import (
    KINDS,
    LANGUAGES,
    RANKS,
    VERIFICATION_LEVELS,
    Appendix,
    AppendixResolution,
    Basis,
    InvalidCountryError,
    PopulationListing,
    Taxon,
    TaxonKind,
    TaxonNotFoundError,
    TaxonomyError,
    normalize_name,
    strictest,
)

__all__ = [
    "COUNTRIES_PATH",
    "DATA_DIR",
    "DEFAULT_POPULATIONS_NAME",
    "DEFAULT_TAXA_PATH",
    "KINDS",
    "LANGUAGES",
    "POPULATION_COLUMNS",
    "RANKS",
    "TAXA_COLUMNS",
    "VERIFICATION_LEVELS",
    "Appendix",
    "AppendixResolution",
    "AppendixRules",
    "Basis",
    "InvalidCountryError",
    "PopulationListing",
    "Taxon",
    "TaxonKind",
    "TaxonNotFoundError",
    "Taxonomy",
    "TaxonomyError",
    "default_taxonomy",
    "load_taxa",
    "normalize_name",
    "read_countries",
    "strictest",
]
