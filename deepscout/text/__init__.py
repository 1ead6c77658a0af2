"""Text utilities shared by the agent, the tools, the memory and the evals: word terms and stopwords
(:mod:`.terms`), reciprocal-rank fusion (:mod:`.fusion`) and the ``[n]`` citation resolver
(:mod:`.citations`). Pure functions over strings and sequences; nothing here imports the rest of the
package.
"""
