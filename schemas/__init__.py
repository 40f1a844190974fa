"""Record types, the pyarrow sample schema, the recipe schema and the controlled vocabularies."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
VOCAB_DIR = os.path.join(HERE, "vocab")
