"""Fine-tuning from documents and images: the text and image services, what their forms may hold, the
examples a model learns from, and the store of question/answer pairs."""
