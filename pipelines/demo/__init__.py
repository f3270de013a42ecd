"""The demo: `imgsearch demo` (command.py) and the generated corpus it runs on.

corpus.py writes the corpus (manifest, ground truth, captions, word vectors, images); objects.py
holds its classes and how each object is drawn, drawing.py the pictures, captions.py the captions
and the word vectors trained on them. The bench's and the tests' images are model/synthetic_images.py.
"""
