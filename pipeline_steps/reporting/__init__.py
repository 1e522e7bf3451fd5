"""The report stage's parts: the paper's claims and their verdict rules, the document, its HTML."""
